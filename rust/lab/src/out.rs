//! The harness's output: one JSON object per line on stdout, each tagged with its source
//! (`"lab"` or a device label) and the seconds since the harness started.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{Map, Value};

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Seconds since the harness started.
pub fn now() -> f64 {
    start().elapsed().as_secs_f64()
}

/// Prints `obj` (a JSON object; anything else is wrapped as `{"value": ...}`) with `src` and
/// `t` set (a `t` of the object is replaced), as one line, and flushes.
pub fn emit(src: &str, obj: Value) {
    let mut map = match obj {
        Value::Object(m) => m,
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            m
        }
    };
    map.insert("src".into(), Value::from(src));
    map.insert("t".into(), Value::from((now() * 1000.0).round() / 1000.0));
    let line = Value::Object(map).to_string();
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

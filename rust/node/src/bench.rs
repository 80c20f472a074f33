//! The raw modes, unchanged: the performance ceiling of the benchmarks (`bench`), and a peer
//! that is not the binding for the transport tests (`echo`, `send-raw`).
//!
//! Every mode binds to 127.0.0.1 with relays, address lookup and the portmapper off.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use iroh::endpoint::{Connection, PortmapperConfig, RecvStream, presets};
use iroh::{Endpoint, EndpointAddr, RelayMode};
use iroh_tickets::endpoint::EndpointTicket;

pub const USAGE: &str = "usage:
  iroh-pair-node echo --alpn ALPN
      serve raw echo: every bidirectional stream gets back exactly the bytes it carried
  iroh-pair-node send-raw TICKET --alpn ALPN --bytes N
      send N deterministic bytes on one stream, read the echo, check it
  iroh-pair-node bench WORKLOAD [--count N] [--mib M] [--samples] [--peer TICKET]
      WORKLOAD: sequential | queued | bulk | connect-per-message | idle-connections
      --samples adds every latency (us) as \"lat_us\"; idle-connections holds N connections
      to the echo server at --peer (another process) and reports the RSS growth per connection;
      the other workloads with --peer run against a bench-server in another process
  iroh-pair-node bench-online --relay URL[#qad=none|#qad=PORT] [--count N] [--ca-cert PEM]
                 [--bind IP:PORT|default]
      time Endpoint::online() with that relay (a fresh endpoint per run; RUST_LOG for iroh logs)
  iroh-pair-node bench-server WORKLOAD
      the server half of `bench WORKLOAD --peer TICKET`: prints its ticket, serves until stdin
      closes";

pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

pub async fn bind(alpns: Vec<Vec<u8>>) -> Result<Endpoint> {
    Endpoint::builder(presets::Minimal)
        .alpns(alpns)
        .relay_mode(RelayMode::Disabled)
        .portmapper_config(PortmapperConfig::Disabled)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")?
        .bind()
        .await
        .context("binding the endpoint")
}

/// The byte at offset `i` of the deterministic test pattern.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 7) as u8
}

pub async fn echo(alpn: String) -> Result<()> {
    let ep = bind(vec![alpn.into_bytes()]).await?;
    println!(
        "{{\"event\":\"ready\",\"id\":\"{}\",\"ticket\":\"{}\"}}",
        ep.id(),
        EndpointTicket::new(ep.addr())
    );
    while let Some(incoming) = ep.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let n = tokio::io::copy(&mut recv, &mut send).await.unwrap_or(0);
                    let _ = send.finish();
                    println!("{{\"event\":\"echoed\",\"bytes\":{n}}}");
                });
            }
        });
    }
    Ok(())
}

pub async fn send_raw(ticket: &str, alpn: String, n: u64) -> Result<()> {
    let addr: EndpointAddr = ticket.parse::<EndpointTicket>()?.into();
    let ep = bind(vec![]).await?;
    let conn = ep.connect(addr, alpn.as_bytes()).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let data: Vec<u8> = (0..n).map(pattern).collect();
    let writer = async {
        send.write_all(&data).await?;
        send.finish()?;
        anyhow::Ok(())
    };
    let reader = async { Ok(recv.read_to_end(usize::MAX).await?) };
    let ((), back) = tokio::try_join!(writer, reader)?;
    let ok = back == data;
    println!(
        "{{\"event\":\"sent\",\"bytes\":{n},\"echoed\":{},\"match\":{ok}}}",
        back.len()
    );
    conn.close(0u32.into(), b"done");
    ep.close().await;
    if !ok {
        bail!("the echo did not match what was sent");
    }
    Ok(())
}

const REQUEST: usize = 200;
const REPLY: usize = 64;

async fn read_request(recv: &mut RecvStream) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    recv.read_exact(&mut body).await?;
    Ok(body)
}

/// The same request protocol as the package: a framed request, the reply to the end.
fn serve_requests(conn: Connection) {
    tokio::spawn(async move {
        let reply = Bytes::from(vec![7u8; REPLY]);
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                if read_request(&mut recv).await.is_ok() {
                    let _ = send.write_chunk(reply).await;
                    let _ = send.finish();
                }
            });
        }
    });
}

async fn request(conn: &Connection, payload: &Bytes) -> Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut chunks = [
        Bytes::copy_from_slice(&(payload.len() as u32).to_be_bytes()),
        payload.clone(),
    ];
    send.write_all_chunks(&mut chunks).await?;
    send.finish()?;
    Ok(recv.read_to_end(1 << 20).await?)
}

/// This process's resident set size in KiB (Linux: VmRSS of /proc/self/status).
fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS line")?
        .parse()?)
}

/// RSS growth per idle connection: one warm-up connection to `ticket`'s echo server (kept),
/// then `count` more, held idle for a second before measuring.
async fn idle_connections(ticket: &str, count: usize) -> Result<String> {
    const ECHO_ALPN: &[u8] = b"iroh-pair-bench/1";
    let addr: EndpointAddr = ticket.parse::<EndpointTicket>()?.into();
    let client = bind(vec![]).await?;
    let warm = client.connect(addr.clone(), ECHO_ALPN).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib()?;
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        conns.push(client.connect(addr.clone(), ECHO_ALPN).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib()?;
    let open = conns.iter().filter(|c| c.close_reason().is_none()).count();
    for c in conns.iter().chain([&warm]) {
        c.close(0u32.into(), b"done");
    }
    tokio::time::timeout(Duration::from_secs(5), client.close())
        .await
        .ok();
    Ok(format!(
        "{{\"workload\":\"idle-connections\",\"count\":{count},\"open\":{open},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"kib_per_conn\":{:.2}}}",
        (after as f64 - before as f64) / count as f64
    ))
}

fn samples_json(lat: &[f64]) -> String {
    let all: Vec<String> = lat.iter().map(|s| format!("{:.1}", s * 1e6)).collect();
    format!(",\"lat_us\":[{}]", all.join(","))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The server half of `bench`: bulk streams are counted and the count sent back; any other
/// stream is a framed request answered with `REPLY` bytes.
fn serve_bench(ep: Endpoint, bulk: bool) {
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let Ok(conn) = incoming.await else { continue };
            if bulk {
                tokio::spawn(async move {
                    if let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let mut n = 0u64;
                        while let Ok(Some(chunk)) = recv.read_chunk(1 << 20).await {
                            n += chunk.len() as u64;
                        }
                        let _ = send.write_all(&n.to_be_bytes()).await;
                        let _ = send.finish();
                    }
                    conn.closed().await;
                });
            } else {
                serve_requests(conn);
            }
        }
    });
}

/// `bench-server WORKLOAD`: the server of a two-process `bench --peer`, until stdin closes.
pub async fn bench_server(workload: &str) -> Result<()> {
    const ALPN: &[u8] = b"iroh-pair-bench/1";
    let ep = bind(vec![ALPN.to_vec()]).await?;
    serve_bench(ep.clone(), workload == "bulk");
    println!(
        "{{\"event\":\"ready\",\"ticket\":\"{}\"}}",
        EndpointTicket::new(ep.addr())
    );
    let mut sink = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await?;
    ep.close().await;
    Ok(())
}

pub async fn bench(workload: &str, count: usize, mib: usize) -> Result<()> {
    const ALPN: &[u8] = b"iroh-pair-bench/1";
    let args: Vec<String> = std::env::args().collect();
    let with_samples = args.iter().any(|a| a == "--samples");
    if workload == "idle-connections" {
        let ticket = arg(&args, "--peer").context("idle-connections needs --peer TICKET")?;
        println!("{}", idle_connections(&ticket, count).await?);
        return Ok(());
    }
    // With --peer the server is another process (`bench-server`); else it shares this one.
    let (addr, server) = match arg(&args, "--peer") {
        Some(ticket) => (ticket.parse::<EndpointTicket>()?.into(), None),
        None => {
            let server = bind(vec![ALPN.to_vec()]).await?;
            serve_bench(server.clone(), workload == "bulk");
            (server.addr(), Some(server))
        }
    };
    let client = bind(vec![]).await?;
    let payload = Bytes::from(vec![1u8; REQUEST]);
    let result = match workload {
        "sequential" => {
            let conn = client.connect(addr, ALPN).await?;
            for _ in 0..50 {
                request(&conn, &payload).await?;
            }
            let mut lat = Vec::with_capacity(count);
            let before = conn.stats();
            let start = Instant::now();
            for _ in 0..count {
                let t = Instant::now();
                let r = request(&conn, &payload).await?;
                lat.push(t.elapsed().as_secs_f64());
                if r.len() != REPLY {
                    bail!("bad reply length {}", r.len());
                }
            }
            let total = start.elapsed().as_secs_f64();
            let after = conn.stats();
            // UDP datagrams the connection sent and received, per request (both directions).
            let datagrams = (after.udp_tx.datagrams + after.udp_rx.datagrams
                - before.udp_tx.datagrams
                - before.udp_rx.datagrams) as f64
                / count as f64;
            let samples = if with_samples {
                samples_json(&lat)
            } else {
                String::new()
            };
            lat.sort_by(f64::total_cmp);
            format!(
                "{{\"workload\":\"sequential\",\"count\":{count},\"msg_per_s\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"datagrams_per_request\":{datagrams:.2}{samples}}}",
                count as f64 / total,
                percentile(&lat, 0.5) * 1e6,
                percentile(&lat, 0.99) * 1e6
            )
        }
        "queued" => {
            let conn = client.connect(addr, ALPN).await?;
            for _ in 0..50 {
                request(&conn, &payload).await?;
            }
            let start = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..count {
                let conn = conn.clone();
                let payload = payload.clone();
                set.spawn(async move { request(&conn, &payload).await });
            }
            while let Some(r) = set.join_next().await {
                r??;
            }
            let total = start.elapsed().as_secs_f64();
            format!(
                "{{\"workload\":\"queued\",\"count\":{count},\"msg_per_s\":{:.1}}}",
                count as f64 / total
            )
        }
        "connect-per-message" => {
            let mut lat = Vec::with_capacity(count);
            let start = Instant::now();
            for _ in 0..count {
                let t = Instant::now();
                let conn = client.connect(addr.clone(), ALPN).await?;
                request(&conn, &payload).await?;
                conn.close(0u32.into(), b"done");
                lat.push(t.elapsed().as_secs_f64());
            }
            let total = start.elapsed().as_secs_f64();
            let samples = if with_samples {
                samples_json(&lat)
            } else {
                String::new()
            };
            lat.sort_by(f64::total_cmp);
            format!(
                "{{\"workload\":\"connect-per-message\",\"count\":{count},\"msg_per_s\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1}{samples}}}",
                count as f64 / total,
                percentile(&lat, 0.5) * 1e6,
                percentile(&lat, 0.99) * 1e6
            )
        }
        "bulk" => {
            let conn = client.connect(addr, ALPN).await?;
            let chunk = Bytes::from(vec![3u8; 1 << 20]);
            let start = Instant::now();
            let (mut send, mut recv) = conn.open_bi().await?;
            for _ in 0..mib {
                send.write_chunk(chunk.clone()).await?;
            }
            send.finish()?;
            let got = recv.read_to_end(8).await?;
            let total = start.elapsed().as_secs_f64();
            let n = u64::from_be_bytes(got.as_slice().try_into()?);
            if n != (mib as u64) << 20 {
                bail!("the server counted {n} bytes");
            }
            format!(
                "{{\"workload\":\"bulk\",\"mib\":{mib},\"mib_per_s\":{:.1}}}",
                mib as f64 / total
            )
        }
        other => bail!("unknown workload {other:?}\n{USAGE}"),
    };
    println!("{result}");
    tokio::time::timeout(Duration::from_secs(5), async {
        client.close().await;
        if let Some(server) = server {
            server.close().await;
        }
    })
    .await
    .ok();
    Ok(())
}

/// `bench-online --relay URL`: how long `Endpoint::online()` takes with one relay, in plain
/// iroh code. Each run binds a fresh endpoint (the `Minimal` preset, the relay, address lookup
/// and portmapper off, bound to `--bind`, default 127.0.0.1:0; `default` for iroh's own
/// sockets), times `bind()` and then `online()`, and closes it. URL is a relay entry as the
/// package takes it (see `node::relay_config`): a plain URL gives iroh's default relay map
/// entry, QAD expected at the URL's host, port 7842, exactly what iroh's own examples build from
/// a URL (`RelayMap::from_iter`); `URL#qad=none` says the relay has no QAD. `--ca-cert PEM`
/// adds a trusted root (a private certificate of the relay's QAD endpoint). Prints one JSON
/// line per run and a summary line; `RUST_LOG` (e.g. `iroh::net_report=debug`) turns on
/// iroh's logs on stderr.
pub async fn bench_online(args: &[String]) -> Result<()> {
    use iroh::{RelayMap, Watcher as _};

    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let entry = arg(args, "--relay").context("bench-online needs --relay URL")?;
    let relay_map = RelayMap::from(crate::node::relay_config(&entry)?);
    let count: usize = arg(args, "--count").unwrap_or("10".into()).parse()?;
    let bind_addr = arg(args, "--bind").unwrap_or("127.0.0.1:0".into());
    let roots = match arg(args, "--ca-cert") {
        Some(path) => {
            use rustls_pki_types::CertificateDer;
            use rustls_pki_types::pem::PemObject;
            let certs = CertificateDer::pem_file_iter(&path)
                .with_context(|| format!("reading {path}"))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing {path}"))?;
            Some(certs)
        }
        None => None,
    };
    let mut online_ms = Vec::new();
    for run in 0..count {
        let t0 = Instant::now();
        let mut b = Endpoint::builder(presets::Minimal)
            .relay_mode(RelayMode::Custom(relay_map.clone()))
            .portmapper_config(PortmapperConfig::Disabled);
        if bind_addr != "default" {
            b = b.clear_ip_transports().bind_addr(bind_addr.as_str())?;
        }
        if let Some(roots) = &roots {
            b = b.ca_tls_config(iroh::tls::CaTlsConfig::default().with_extra_roots(roots.clone()));
        }
        let ep = b.bind().await.context("binding the endpoint")?;
        let bound = t0.elapsed();
        tokio::time::timeout(Duration::from_secs(30), ep.online())
            .await
            .context("online() took more than 30 s")?;
        let online = t0.elapsed() - bound;
        let status = ep.home_relay_status().get();
        println!(
            "{}",
            serde_json::json!({
                "event": "run", "run": run,
                "bind_ms": bound.as_secs_f64() * 1e3,
                "online_ms": online.as_secs_f64() * 1e3,
                "home_relay": status.first().map(|s| s.url().to_string()),
            })
        );
        online_ms.push(online.as_secs_f64() * 1e3);
        ep.close().await;
    }
    let mut sorted = online_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.is_empty() {
        0.0
    } else if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    println!(
        "{}",
        serde_json::json!({
            "event": "summary", "relay": entry, "count": count,
            "online_ms_median": median,
            "online_ms_max": sorted.last().copied().unwrap_or(0.0),
        })
    );
    Ok(())
}

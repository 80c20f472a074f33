//! `iroh-pair-servers relay ARGS...` or `iroh-pair-servers dns ARGS...`: the relay
//! (`iroh-pair-relay`) and the address lookup server (`iroh-pair-dns`) in one binary. Both
//! share most of their code (tokio, rustls, hyper, iroh's relay protocol), so one binary is
//! about the size of the larger of the two; this is the one the Python wheel installs, and
//! `iroh_pair.testing.LocalServers` (`iroh-pair servers`) runs it when the two separate
//! binaries are not found. The arguments after the first are the server's own.

const USAGE: &str =
    "usage: iroh-pair-servers relay|dns [ARGS...] (--help after relay or dns for theirs)";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let which = args.next();
    let rest: Vec<String> = args.collect();
    match which.as_deref() {
        Some("relay") => iroh_pair_relay::run(rest).await,
        Some("dns") => iroh_pair_dns::run(rest).await,
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some("-V" | "--version") => {
            println!("iroh-pair-servers {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2)
        }
    }
}

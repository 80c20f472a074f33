//! The relay server's own binary; the server is the library (`src/lib.rs`), also linked into
//! `iroh-pair-servers` (rust/servers), the one binary the Python wheel ships.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    iroh_pair_relay::run(std::env::args().skip(1).collect()).await
}

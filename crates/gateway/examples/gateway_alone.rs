//! The gateway alone, for profiling it without building the whole `flowers` binary: it proxies
//! `127.0.0.1:LISTEN` to one replica at `127.0.0.1:UPSTREAM` routed at "/", on a runtime like
//! the one `flowers up` starts, with an access log written to `/dev/null` by a thread of its
//! own (as `flowers up` writes its file) unless `GATEWAY_ACCESS_LOG=0`, and
//! `GATEWAY_WORKER_THREADS` worker threads (default: one per core).
//!
//! `cargo run --release -p gateway --example gateway_alone -- LISTEN UPSTREAM`

use std::net::SocketAddr;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = |i: usize| -> u16 { args[i].parse().expect("a port") };
    let (listen, upstream) = (port(1), port(2));
    let access_log = (std::env::var("GATEWAY_ACCESS_LOG").as_deref() != Ok("0")).then(|| {
        let (log, mut reader) = gateway::AccessLog::channel(8192);
        std::thread::spawn(move || {
            use std::io::Write;
            let mut sink = std::fs::File::create("/dev/null").unwrap();
            let mut batch = String::new();
            while let Some(record) = reader.blocking_recv() {
                batch.clear();
                batch.push_str(&record.to_json_line());
                while batch.len() < 64 * 1024 {
                    match reader.try_recv() {
                        Some(record) => batch.push_str(&record.to_json_line()),
                        None => break,
                    }
                }
                let _ = sink.write_all(batch.as_bytes());
            }
        });
        log
    });
    let gateway = gateway::Gateway::new(gateway::Settings {
        access_log,
        worker_threads: std::env::var("GATEWAY_WORKER_THREADS")
            .map_or(0, |threads| threads.parse().expect("a number of threads")),
        ..gateway::Settings::default()
    });
    gateway.update(gateway::RouteTable {
        routes: vec![gateway::Route {
            service: "upstream".into(),
            host: None,
            path_prefix: "/".into(),
            replicas: vec![gateway::Replica {
                run: "upstream-1".into(),
                addr: SocketAddr::from(([127, 0, 0, 1], upstream)),
            }],
            hold: Duration::from_secs(5),
            max_body: 1 << 30,
            api_keys: vec![],
        }],
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen))
            .await
            .unwrap();
        gateway.serve(listener, std::future::pending()).await;
    });
}

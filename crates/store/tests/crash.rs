//! Committed means durable: a process killed with SIGKILL at any moment loses nothing it was
//! told had committed, and leaves a database that passes `PRAGMA integrity_check`.
//!
//! The test re-executes its own binary as the writer (selected by an environment variable), so
//! the writer is real code in a separate process without an extra binary target.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use domain::{ByteSize, DeviceId, EventKind, Name, NewEvent, OwnerKind, RunId, RunOwner, RunState};
use store::{NewRun, RunUpdate, Store};

/// Set on the child process: the path of the database the writer fills.
const WRITER_DB_ENV: &str = "FLOWERS_STORE_CRASH_WRITER_DB";
const WRITER_TEST: &str = "crash_writer";
const ROUNDS: usize = 5;

/// The writer half. In an ordinary test run the variable is unset and this returns at once;
/// in the child it writes until it is killed, printing each id only after its commit returned.
#[test]
fn crash_writer() {
    let Some(path) = std::env::var_os(WRITER_DB_ENV) else {
        return;
    };
    let store = Store::open(Path::new(&path)).expect("writer opens the store");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let owner = RunOwner {
        kind: OwnerKind::Service,
        name: Name::new("chat").unwrap(),
        replica: 0,
    };
    for attempt in 0u32.. {
        let run = store
            .insert_run(&NewRun {
                owner: owner.clone(),
                device: Some(DeviceId::cpu(0)),
                vram_reserved: Some(ByteSize::mib(512)),
                port: Some(40000),
                spec_hash: "h".into(),
                run_dir: PathBuf::from("/tmp/run"),
                attempt,
                model_version: None,
            })
            .unwrap();
        writeln!(out, "committed run {}", run.id).unwrap();
        out.flush().unwrap();
        store
            .update_run(
                &run.id,
                &RunUpdate {
                    state: Some(RunState::Ready),
                    pid: Some(attempt),
                    ..Default::default()
                },
            )
            .unwrap();
        writeln!(out, "committed ready {}", run.id).unwrap();
        out.flush().unwrap();
        let event = store
            .append_event(
                &NewEvent::new(EventKind::RunReady, "ready")
                    .owner("chat")
                    .run(&run.id),
            )
            .unwrap();
        writeln!(out, "committed event {}", event.id).unwrap();
        out.flush().unwrap();
    }
}

/// What the writer claimed to have committed.
#[derive(Default)]
struct Claims {
    runs: HashSet<String>,
    ready: HashSet<String>,
    events: HashSet<i64>,
}

impl Claims {
    fn record(&mut self, line: &str) -> bool {
        let mut words = line.split_whitespace();
        if words.next() != Some("committed") {
            return false;
        }
        match (words.next(), words.next()) {
            (Some("run"), Some(id)) => self.runs.insert(id.to_string()),
            (Some("ready"), Some(id)) => self.ready.insert(id.to_string()),
            (Some("event"), Some(id)) => self.events.insert(id.parse().expect("event id")),
            _ => panic!("unexpected writer line {line:?}"),
        };
        true
    }
}

/// A small xorshift generator seeded from the clock: no extra dependency, and the seed is
/// printed so a failing round can be replayed by reading the log.
struct Random(u64);

impl Random {
    fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let seed = (nanos ^ (u64::from(std::process::id()) << 32)) | 1;
        eprintln!("crash test seed {seed}");
        Random(seed)
    }
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

#[test]
fn committed_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flowers.db");
    let exe = std::env::current_exe().unwrap();
    let mut random = Random::from_clock();
    let mut claims = Claims::default();

    for round in 0..ROUNDS {
        // Kill after a random number of committed lines: a point in time chosen by the writer's
        // own progress, so it lands mid-transaction at varied places without any sleep.
        let kill_after = 1 + random.below(600);
        let mut child = Command::new(&exe)
            .args([WRITER_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(WRITER_DB_ENV, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0u64;
        let mut killed = false;
        for line in lines.by_ref() {
            if claims.record(&line.unwrap()) {
                seen += 1;
            }
            if seen >= kill_after {
                child.kill().unwrap();
                killed = true;
                break;
            }
        }
        assert!(
            killed,
            "round {round}: the writer stopped by itself after {seen} commits: {}",
            String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr)
        );
        // Lines already in the pipe were committed before the kill; they count too.
        for line in lines {
            match line {
                Ok(line) => {
                    claims.record(&line);
                }
                Err(_) => break,
            }
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: {status:?}");
        eprintln!("round {round}: killed after {seen} commits");

        verify(&db, &claims, round);
    }
    assert!(!claims.events.is_empty());
}

fn verify(db: &Path, claims: &Claims, round: usize) {
    // Opening runs WAL recovery exactly as Flowers does after a crash.
    let store = Store::open(db).unwrap();
    {
        let conn = rusqlite::Connection::open(db).unwrap();
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(integrity, "ok", "round {round}");
        let present: HashSet<i64> = conn
            .prepare("SELECT id FROM events")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let lost: Vec<_> = claims.events.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "round {round}: committed events lost: {lost:?}"
        );
    }
    for id in &claims.runs {
        let run = store.run(&RunId(id.clone())).unwrap();
        assert!(run.is_some(), "round {round}: committed run {id} lost");
    }
    for id in &claims.ready {
        let run = store.run(&RunId(id.clone())).unwrap().unwrap();
        assert_eq!(
            run.state,
            RunState::Ready,
            "round {round}: update of {id} lost"
        );
    }
}

//! The monitor: a small process between Flowers and a Run's command (like podman's conmon).
//!
//! It is the `flowers` binary itself, run as a hidden subcommand, and it is given everything on
//! its command line so that it never needs Flowers to be alive. It owns the command's output
//! (copied into the rotated `output.log`), reaps everything the command leaves behind, and
//! records the command's exit status in `exit.json` for whichever Flowers asks next.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::ExitStatus;

use crate::procfs::group_members;
use crate::rotate::RotatingLog;
use crate::run_files::{write_atomic, write_exit_status, CHILD_PID_FILE};

/// The monitor's own failure (bad arguments, unwritable Run directory), apart from any status of
/// the command; the same number container runtimes use for it.
const MONITOR_FAILURE: i32 = 125;
const NOT_EXECUTABLE: i32 = 126;
const NOT_FOUND: i32 = 127;
/// How long the monitor waits for leftovers of the group to die and for the output pipe to
/// close once the command itself has exited.
const CLEANUP_BOUND: Duration = Duration::from_secs(2);

/// Everything a monitor is told, in the order [`MonitorArgs::to_args`] writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MonitorArgs {
    pub run_dir: PathBuf,
    pub log_max_bytes: u64,
    pub log_keep: u32,
    pub workdir: Option<PathBuf>,
    pub command: Vec<OsString>,
}

impl MonitorArgs {
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--run-dir".into(),
            self.run_dir.clone().into(),
            "--log-max-bytes".into(),
            self.log_max_bytes.to_string().into(),
            "--log-keep".into(),
            self.log_keep.to_string().into(),
        ];
        if let Some(workdir) = &self.workdir {
            args.push("--workdir".into());
            args.push(workdir.clone().into());
        }
        args.push("--".into());
        args.extend(self.command.iter().cloned());
        args
    }

    pub fn parse(args: Vec<OsString>) -> Result<Self, String> {
        let mut run_dir = None;
        let mut log_max_bytes = None;
        let mut log_keep = None;
        let mut workdir = None;
        let mut args = args.into_iter();
        loop {
            let Some(flag) = args.next() else {
                return Err("missing `--` before the command".to_string());
            };
            if flag == "--" {
                break;
            }
            let flag_text = flag.to_string_lossy().into_owned();
            let value = args
                .next()
                .ok_or_else(|| format!("{flag_text} needs a value"))?;
            let number = |what: &str| {
                value
                    .to_str()
                    .and_then(|text| text.parse::<u64>().ok())
                    .ok_or_else(|| format!("{what}: expected a number, got {value:?}"))
            };
            match flag_text.as_str() {
                "--run-dir" => run_dir = Some(PathBuf::from(&value)),
                "--log-max-bytes" => log_max_bytes = Some(number("--log-max-bytes")?),
                "--log-keep" => {
                    let keep = number("--log-keep")?;
                    log_keep = Some(
                        u32::try_from(keep)
                            .map_err(|_| format!("--log-keep: {keep} is too big"))?,
                    );
                }
                "--workdir" => workdir = Some(PathBuf::from(&value)),
                _ => return Err(format!("unknown flag {flag_text}")),
            }
        }
        let command: Vec<OsString> = args.collect();
        if command.is_empty() {
            return Err("no command after `--`".to_string());
        }
        Ok(MonitorArgs {
            run_dir: run_dir.ok_or("missing --run-dir")?,
            log_max_bytes: log_max_bytes.ok_or("missing --log-max-bytes")?,
            log_keep: log_keep.ok_or("missing --log-keep")?,
            workdir,
            command,
        })
    }
}

/// Entry point of the hidden monitor subcommand; `args` are the arguments after the subcommand
/// name. Call it before any runtime or thread is started. Exits with the command's exit code
/// (128+n for signal n), 126/127 when the command could not be started, 125 when the monitor
/// itself could not work. Never returns.
pub fn monitor_main(args: Vec<OsString>) -> ! {
    let code = match MonitorArgs::parse(args) {
        Ok(args) => run(&args),
        Err(reason) => {
            eprintln!("flowers monitor: {reason}");
            MONITOR_FAILURE
        }
    };
    std::process::exit(code)
}

fn run(args: &MonitorArgs) -> i32 {
    // A stop signals the whole group; the monitor must outlive the command to record how it
    // ended. (Flowers already set these before exec; this covers a monitor started otherwise.)
    // SAFETY: setting dispositions to SIG_IGN before any other thread exists.
    unsafe {
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(signal, libc::SIG_IGN);
        }
        // Orphaned descendants of the command are re-parented here and reaped below, instead
        // of escaping to init where nothing would kill them.
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let log = match RotatingLog::open(&args.run_dir, args.log_max_bytes, args.log_keep) {
        Ok(log) => log,
        Err(error) => {
            let path = crate::logs::current_log(&args.run_dir);
            eprintln!("flowers monitor: cannot open {}: {error}", path.display());
            record_exit(args, ExitStatus::exited(MONITOR_FAILURE));
            return MONITOR_FAILURE;
        }
    };
    let log = Arc::new(Mutex::new(log));
    let program = args.command[0].to_string_lossy().into_owned();

    if let Some(workdir) = &args.workdir {
        if !workdir.is_dir() {
            let reason = format!(
                "cannot start {program}: workdir {} does not exist or is not a directory",
                workdir.display()
            );
            return fail_start(args, &log, &reason, NOT_FOUND);
        }
    }
    let (output_read, output_write) = match cloexec_pipe() {
        Ok(pipe) => pipe,
        Err(error) => {
            let reason = format!("cannot start {program}: cannot create a pipe: {error}");
            return fail_start(args, &log, &reason, MONITOR_FAILURE);
        }
    };
    let stderr_write = match output_write.try_clone() {
        Ok(fd) => fd,
        Err(error) => {
            let reason = format!("cannot start {program}: cannot duplicate a pipe: {error}");
            return fail_start(args, &log, &reason, MONITOR_FAILURE);
        }
    };
    let mut command = Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .stdin(Stdio::null())
        // One pipe for both streams keeps their lines in the order they were written.
        .stdout(Stdio::from(output_write))
        .stderr(Stdio::from(stderr_write));
    if let Some(workdir) = &args.workdir {
        command.current_dir(workdir);
    }
    let monitor_pid = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls.
    unsafe {
        command.pre_exec(move || {
            for signal in 1..32 {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // A monitor killed with SIGKILL must not leave its command running unobserved.
            // The signal follows the thread that forked: the monitor's main thread, which
            // lives until the monitor exits.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != monitor_pid {
                // The monitor died before PDEATHSIG was armed.
                libc::_exit(128 + libc::SIGKILL);
            }
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let code = match error.raw_os_error() {
                Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) => NOT_EXECUTABLE,
                _ if error.kind() == io::ErrorKind::PermissionDenied => NOT_EXECUTABLE,
                _ => NOT_FOUND,
            };
            let reason = match error.kind() {
                io::ErrorKind::NotFound => format!("cannot start {program}: command not found"),
                _ if code == NOT_EXECUTABLE => {
                    format!("cannot start {program}: not executable ({error})")
                }
                _ => format!("cannot start {program}: {error}"),
            };
            return fail_start(args, &log, &reason, code);
        }
    };
    // Dropping the command closes the monitor's copies of the pipe's write end, so that the
    // reader sees end-of-file once the command and its descendants are gone.
    drop(command);
    let child_pid = child.id() as libc::pid_t;
    if let Err(error) = write_atomic(
        &args.run_dir.join(CHILD_PID_FILE),
        child_pid.to_string().as_bytes(),
    ) {
        eprintln!("flowers monitor: cannot write {CHILD_PID_FILE}: {error}");
    }

    let (drained_tx, drained_rx) = mpsc::channel::<()>();
    {
        let log = Arc::clone(&log);
        let mut output = File::from(output_read);
        std::thread::spawn(move || {
            copy_output(&mut output, &log);
            let _ = drained_tx.send(());
        });
    }

    let status = wait_for(child_pid);
    kill_leftovers();
    if drained_rx.recv_timeout(CLEANUP_BOUND).is_err() {
        // A descendant that left the process group still holds the pipe open.
        eprintln!("flowers monitor: output still open after the command exited; not waiting");
    }
    record_exit(args, status);
    status.code
}

/// Copies the command's output into the log until end-of-file. Keeps draining even when the
/// log cannot be written, so that the command never blocks on a full pipe.
fn copy_output(output: &mut File, log: &Mutex<RotatingLog>) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut reported = false;
    loop {
        let read = match output.read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                eprintln!("flowers monitor: cannot read the command's output: {error}");
                return;
            }
        };
        let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = log.write(&buffer[..read]) {
            if !reported {
                eprintln!("flowers monitor: cannot write output.log: {error}");
                reported = true;
            }
        }
    }
}

/// Reaps children until the command itself exits; anything else reaped on the way is a
/// descendant re-parented to this subreaper.
fn wait_for(child_pid: libc::pid_t) -> ExitStatus {
    loop {
        let mut raw = 0;
        // SAFETY: plain waitpid with a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut raw, 0) };
        if pid == -1 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // ECHILD: the command is gone without a status we saw; should not happen.
            eprintln!("flowers monitor: waitpid failed: {error}");
            return ExitStatus::signaled(libc::SIGKILL);
        }
        if pid == child_pid {
            if libc::WIFSIGNALED(raw) {
                return ExitStatus::signaled(libc::WTERMSIG(raw));
            }
            return ExitStatus::exited(libc::WEXITSTATUS(raw));
        }
    }
}

/// Kills what is left of the monitor's process group once the command has exited, and reaps it.
fn kill_leftovers() {
    let own_pid = std::process::id();
    // SAFETY: getpgrp cannot fail.
    let pgid = unsafe { libc::getpgrp() } as u32;
    let deadline = Instant::now() + CLEANUP_BOUND;
    loop {
        reap_without_blocking();
        let leftovers: Vec<u32> = group_members(pgid)
            .into_iter()
            .filter(|&pid| pid != own_pid)
            .collect();
        if leftovers.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in leftovers {
            // SAFETY: kill with a pid read from /proc; ESRCH when it just exited is harmless.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn reap_without_blocking() {
    loop {
        let mut raw = 0;
        // SAFETY: plain waitpid with a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}

fn fail_start(args: &MonitorArgs, log: &Mutex<RotatingLog>, reason: &str, code: i32) -> i32 {
    eprintln!("flowers monitor: {reason}");
    let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Err(error) = log.write(format!("{reason}\n").as_bytes()) {
        eprintln!("flowers monitor: cannot write output.log: {error}");
    }
    record_exit(args, ExitStatus::exited(code));
    code
}

fn record_exit(args: &MonitorArgs, status: ExitStatus) {
    if let Err(error) = write_exit_status(&args.run_dir, status) {
        eprintln!(
            "flowers monitor: cannot write {}: {error}",
            crate::run_files::exit_file(&args.run_dir).display()
        );
    }
}

fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let args = MonitorArgs {
            run_dir: "/runs/chat-1".into(),
            log_max_bytes: 1024,
            log_keep: 3,
            workdir: Some("/srv/app".into()),
            command: vec!["python3".into(), "--".into(), "-c".into()],
        };
        assert_eq!(MonitorArgs::parse(args.to_args()).unwrap(), args);
        let without_workdir = MonitorArgs {
            workdir: None,
            ..args
        };
        assert_eq!(
            MonitorArgs::parse(without_workdir.to_args()).unwrap(),
            without_workdir
        );
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let parse = |args: &[&str]| {
            MonitorArgs::parse(args.iter().map(OsString::from).collect()).unwrap_err()
        };
        assert_eq!(
            parse(&["--run-dir", "/r"]),
            "missing `--` before the command"
        );
        assert_eq!(
            parse(&["--run-dir", "/r", "--log-max-bytes", "ten", "--", "x"]),
            "--log-max-bytes: expected a number, got \"ten\""
        );
        assert_eq!(parse(&["--bogus", "1", "--", "x"]), "unknown flag --bogus");
        assert_eq!(
            parse(&[
                "--run-dir",
                "/r",
                "--log-max-bytes",
                "1",
                "--log-keep",
                "1",
                "--"
            ]),
            "no command after `--`"
        );
        assert_eq!(
            parse(&["--log-max-bytes", "1", "--log-keep", "1", "--", "x"]),
            "missing --run-dir"
        );
    }
}

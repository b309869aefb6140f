//! Reading `/proc`: start times guard against pid reuse, process groups say what a Run left
//! behind. Everything here tolerates processes vanishing between two reads.

use std::fs;

use crate::ProcessHandle;

/// The fields of `/proc/PID/stat` this crate needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub state: char,
    pub ppid: u32,
    pub pgid: u32,
    pub start_ticks: u64,
}

impl ProcStat {
    /// A zombie (`Z`) or dead (`X`) entry no longer runs anything; only its parent's reaping
    /// is missing.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses one `/proc/PID/stat` line. The command name (field 2) sits in parentheses and may
/// itself contain spaces and parentheses, so the fields are counted from the last `)`.
pub(crate) fn parse_stat(line: &str) -> Option<ProcStat> {
    let after_name = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `fields[0]` is field 3 of proc(5) (state), so field N is `fields[N - 3]`.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

pub(crate) fn read_stat(pid: u32) -> Option<ProcStat> {
    if pid == 0 {
        return None;
    }
    let line = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&line)
}

/// When the process started, in clock ticks after boot (`/proc/PID/stat` field 22); `None` when
/// there is no such process.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    read_stat(pid).map(|stat| stat.start_ticks)
}

/// Whether the process of `handle` still runs: the pid exists, is not a zombie, and is the same
/// process (same start time) rather than a newcomer that was handed a recycled pid.
pub fn is_alive(handle: ProcessHandle) -> bool {
    read_stat(handle.pid)
        .is_some_and(|stat| !stat.is_dead() && stat.start_ticks == handle.start_ticks)
}

/// The process group a monitor started for a Run whose monitor pid was never recorded (Flowers
/// died between starting the monitor and writing its pid down): found through the command's
/// pid in `RUN_DIR/child.pid`. `None` when that command no longer runs.
pub fn unrecorded_group(run_dir: &std::path::Path) -> Option<ProcessHandle> {
    let child = crate::run_files::read_child_pid(run_dir)?;
    let stat = read_stat(child).filter(|stat| !stat.is_dead())?;
    let leader = read_stat(stat.pgid).filter(|leader| !leader.is_dead())?;
    Some(ProcessHandle {
        pid: stat.pgid,
        start_ticks: leader.start_ticks,
    })
}

/// Live (non-zombie) processes whose process group is `pgid`, in ascending pid order.
pub fn group_members(pgid: u32) -> Vec<u32> {
    all_processes()
        .into_iter()
        .filter(|(_, stat)| stat.pgid == pgid && !stat.is_dead())
        .map(|(pid, _)| pid)
        .collect()
}

/// Which Run's process group each of `pids` is in: for every pid, the index in `leaders` of the
/// group leader whose group it belongs to (a Run's monitor leads its group, so a leader's pid is
/// the group id), or `None` for a process outside every Run (another program's, or one that
/// left its Run's group or has ended). Reads `/proc/PID/stat` once per pid.
///
/// Used to attribute the GPU memory NVML reports per process to Runs. NVML reports pids as the
/// host sees them: a Flowers in a container with its own pid namespace finds no Run's processes.
pub fn group_of_each(pids: &[u32], leaders: &[u32]) -> Vec<Option<usize>> {
    attribute(pids, leaders, |pid| read_stat(pid).map(|stat| stat.pgid))
}

/// [`group_of_each`] with the process group lookup handed in, so the matching is testable
/// without processes.
fn attribute(
    pids: &[u32],
    leaders: &[u32],
    group_of: impl Fn(u32) -> Option<u32>,
) -> Vec<Option<usize>> {
    pids.iter()
        .map(|&pid| {
            let leader_index = |group: u32| leaders.iter().position(|&leader| leader == group);
            // A leader is in its own group, even when its stat can no longer be read.
            leader_index(pid).or_else(|| group_of(pid).and_then(leader_index))
        })
        .collect()
}

fn all_processes() -> Vec<(u32, ProcStat)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut processes: Vec<(u32, ProcStat)> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect();
    processes.sort_by_key(|(pid, _)| *pid);
    processes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_name_with_spaces_and_parentheses() {
        let line = "4242 (my (odd) name) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                state: 'S',
                ppid: 1,
                pgid: 4240,
                start_ticks: 987654
            }
        );
    }

    #[test]
    fn a_name_that_looks_like_fields_does_not_shift_them() {
        // A command may name itself `x) R 9 9 (y`: only the last `)` ends the name.
        let line = "77 (x) R 9 9 (y) S 12 300 300 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 555 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!((stat.state, stat.ppid, stat.pgid), ('S', 12, 300));
        assert_eq!(stat.start_ticks, 555);
    }

    #[test]
    fn processes_are_attributed_to_the_group_they_are_in() {
        let groups = std::collections::HashMap::from([(10, 10), (11, 10), (12, 12), (20, 20)]);
        let group_of = |pid: u32| groups.get(&pid).copied();
        // Leaders 10 and 20: 11 is in 10's group; 12 leads a group of its own (it left its Run's
        // group or was never in one); 13 has ended; 20 is a leader whose stat is gone.
        let attributed = attribute(&[11, 12, 13, 10, 20], &[10, 20], group_of);
        assert_eq!(attributed, [Some(0), None, None, Some(0), Some(1)]);
        assert!(attribute(&[11], &[], group_of)[0].is_none());
    }

    #[test]
    fn this_process_belongs_to_its_own_group_and_not_to_another() {
        let pid = std::process::id();
        let pgid = nix::unistd::getpgrp().as_raw() as u32;
        assert_eq!(group_of_each(&[pid], &[1, pgid]), [Some(1)]);
        assert_eq!(group_of_each(&[pid], &[]), [None]);
    }

    #[test]
    fn refuses_a_truncated_line() {
        assert_eq!(parse_stat("12 (sh) S 1 12"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn an_unrecorded_group_is_found_through_child_pid_until_it_ends() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        // A group leader (standing in for a monitor) with a child (standing in for the command).
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $! > child.pid; wait"])
            .current_dir(dir.path())
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while crate::run_files::read_child_pid(dir.path()).is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "child.pid never written"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let handle = unrecorded_group(dir.path()).expect("the group is found");
        assert_eq!(handle.pid, leader.id());
        assert!(is_alive(handle));
        // SAFETY: signals a process group this test created.
        unsafe { libc::kill(-(leader.id() as i32), libc::SIGKILL) };
        leader.wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while unrecorded_group(dir.path()).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the group outlived SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let pid = std::process::id();
        let start_ticks = process_start_ticks(pid).unwrap();
        assert!(is_alive(ProcessHandle { pid, start_ticks }));
        assert!(!is_alive(ProcessHandle {
            pid,
            start_ticks: start_ticks + 1
        }));
        assert!(!is_alive(ProcessHandle {
            pid: 0,
            start_ticks
        }));
    }

    #[test]
    fn this_process_is_in_its_own_group_listing() {
        let pgid = nix::unistd::getpgrp().as_raw() as u32;
        assert!(group_members(pgid).contains(&std::process::id()));
    }
}

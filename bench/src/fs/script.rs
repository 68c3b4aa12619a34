//! The guest side of a file-system run: a script that mounts every peer
//! and then obeys the host, one operation at a time, so the host can drop
//! its own caches and read the daemons' CPU counters around each timed
//! interval:
//!
//! ```text
//! host:  run <op> <peer>          guest: prep_<op> (untimed), then PREPPED
//! host:  go                       guest: op_<op>, timed; RESULT <status> <t0> <t1>
//! host:  quit                     guest: unmounts, exits
//! ```
//!
//! Times are the guest's monotonic clock in nanoseconds, read from
//! `/proc/timer_list` with shell built-ins (busybox `date` has no `%N`).

use std::fmt::Write as _;

use super::ops::{Sizes, SHELL_FUNCTIONS};
use super::peers::{CacheMode, Peer};

/// The guest printed this once every share is mounted.
pub const READY: &str = "BENCH-READY";
/// Prefix of a mount result line: `MOUNT <peer> <status>`.
pub const MOUNT: &str = "MOUNT ";
/// The preparation of an operation is done.
pub const PREPPED: &str = "PREPPED";
/// Prefix of an operation's result line.
pub const RESULT: &str = "RESULT ";
/// fio's JSON output follows / has ended.
pub const FIO_BEGIN: &str = "FIO-BEGIN";
/// See [`FIO_BEGIN`].
pub const FIO_END: &str = "FIO-END";
/// Mount tag of the read-only input share (the source tarball).
pub const INPUT_TAG: &str = "input";

/// The guest script for `peers` in `cache` mode.
pub fn guest_script(peers: &[Peer], cache: CacheMode, sizes: &Sizes) -> String {
    let mut s = String::from("#!/bin/sh\n# airlock-bench: file-system guest\n");
    let _ = writeln!(
        s,
        "SEQ_MIB={}\nRAND_MIB={}\nFILES={}",
        sizes.seq_mib, sizes.random_io_mib, sizes.files
    );
    s.push_str(
        r#"NOW=0
now() {
    if [ -r /proc/timer_list ]; then
        { read -r _; read -r _; read -r _ _ NOW _; } < /proc/timer_list
    else
        read -r up _ < /proc/uptime
        NOW="${up%.*}${up#*.}0000000"
    fi
}
"#,
    );
    s.push_str(SHELL_FUNCTIONS);
    let _ = writeln!(
        s,
        "mkdir -p /mnt/{INPUT_TAG}\n\
         mount -t 9p -o trans=virtio,version=9p2000.L,ro {INPUT_TAG} /mnt/{INPUT_TAG} || exit 1\n\
         cp /mnt/{INPUT_TAG}/tree.tar /tmp/tree.tar || exit 1\n\
         umount /mnt/{INPUT_TAG}"
    );
    for peer in peers {
        let _ = writeln!(
            s,
            "mkdir -p /mnt/{id}\n{mount} && mkdir -p /mnt/{id}/bench\necho \"{MOUNT}{id} $?\"",
            id = peer.id,
            mount = peer.mount_command(cache)
        );
    }
    let _ = writeln!(s, "echo {READY}");
    let _ = write!(
        s,
        r#"while read -r cmd op peer; do
    case "$cmd" in
    run)
        D=/mnt/$peer/bench
        prep_$op > /tmp/prep.out 2>&1
        echo {PREPPED}
        read -r go
        now; t0=$NOW
        op_$op > /tmp/op.out 2>&1
        status=$?
        now; t1=$NOW
        if [ $status -ne 0 ]; then tail -n 5 /tmp/op.out; fi
        if [ "$op" = randread ] || [ "$op" = randwrite ]; then
            echo {FIO_BEGIN}; cat /tmp/fio.json; echo; echo {FIO_END}
        fi
        echo "{RESULT}$status $t0 $t1"
        ;;
    quit) break ;;
    esac
done
sync
"#
    );
    for peer in peers {
        let _ = writeln!(s, "umount /mnt/{} 2>/dev/null", peer.id);
    }
    s.push_str("exit 0\n");
    s
}

/// A parsed `RESULT <status> <t0> <t1>` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpResult {
    /// The operation's exit status.
    pub status: i32,
    /// Its duration in nanoseconds.
    pub elapsed_ns: u64,
}

/// Finds the last `RESULT` line in `text`.
pub fn parse_result(text: &str) -> Option<OpResult> {
    let line = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(RESULT))?;
    let mut fields = line.split_whitespace();
    let status = fields.next()?.parse().ok()?;
    let t0: u64 = fields.next()?.parse().ok()?;
    let t1: u64 = fields.next()?.parse().ok()?;
    Some(OpResult {
        status,
        elapsed_ns: t1.checked_sub(t0)?,
    })
}

/// fio's IOPS (read or write, whichever moved data) from the JSON between
/// the FIO markers in `text`.
pub fn parse_fio_iops(text: &str) -> Option<f64> {
    let start = text.find(FIO_BEGIN)? + FIO_BEGIN.len();
    let end = start + text.get(start..)?.find(FIO_END)?;
    let json: serde_json::Value = serde_json::from_str(text.get(start..end)?.trim()).ok()?;
    let job = json.get("jobs")?.get(0)?;
    ["read", "write"]
        .iter()
        .filter_map(|dir| job.get(dir)?.get("iops")?.as_f64())
        .find(|iops| *iops > 0.0)
}

/// The `MOUNT <peer> <status>` lines: (peer, status).
pub fn parse_mounts(text: &str) -> Vec<(String, i32)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().strip_prefix(MOUNT)?.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::peers::{AIRLOCK, NINEP};
    use super::*;

    #[test]
    fn script_mounts_each_peer() {
        let s = guest_script(&[AIRLOCK, NINEP], CacheMode::Always, &Sizes::QUICK);
        assert!(s.contains("mount -t virtiofs airlock /mnt/airlock"));
        assert!(s.contains("cache=loose 9p /mnt/9p"));
        assert!(s.contains("FILES=200"));
        assert!(s.contains(READY));
    }

    #[test]
    fn results_parse() {
        let text = "noise\nRESULT 0 1000 4000\n";
        assert_eq!(
            parse_result(text),
            Some(OpResult {
                status: 0,
                elapsed_ns: 3000
            })
        );
        assert_eq!(parse_result("RESULT 0 5 4"), None);
        assert_eq!(parse_result("RESULT x"), None);
        let fio = "FIO-BEGIN\n{\"jobs\":[{\"read\":{\"iops\":0.0},\"write\":{\"iops\":1234.5}}]}\n\nFIO-END\n";
        assert_eq!(parse_fio_iops(fio), Some(1234.5));
        assert_eq!(parse_fio_iops("FIO-BEGIN\nnot json\nFIO-END"), None);
        assert_eq!(
            parse_mounts("MOUNT airlock 0\nMOUNT 9p 255\nx"),
            vec![("airlock".into(), 0), ("9p".into(), 255)]
        );
    }
}

//! Path escapes from a guest against airlock-fs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;

use super::*;

/// Every entry under `dir` (recursively, symlinks not followed) with its
/// type, size and content hash: what "nothing changed" is checked against.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let kind = meta.file_type();
            let what = if kind.is_dir() {
                stack.push(path.clone());
                format!("dir {:o}", meta.mode())
            } else if kind.is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if kind.is_file() {
                format!(
                    "file {:o} {} {}",
                    meta.mode(),
                    meta.nlink(),
                    String::from_utf8_lossy(&fs::read(&path).unwrap_or_default())
                )
            } else {
                format!("special {:o} rdev {:x}", meta.mode(), meta.rdev())
            };
            out.insert(path, what);
        }
    }
    out
}

/// The file-status flags of each of `pid`'s descriptors that refers to
/// `path` (from /proc/<pid>/fdinfo).
fn fd_flags_on(pid: u32, path: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|t| t == path))
        .filter_map(|e| {
            let info =
                fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_str()?))
                    .ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
            u32::from_str_radix(flags.trim(), 8).ok()
        })
        .collect()
}

fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mknod with a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o666, libc::makedev(major, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// A guest (root, no id mapping: the strongest guest there is) tries every
/// way out of its share we know of, from the list in virtiofsd's and Kata's
/// advisories: `..` past the root; symlinks to `/`, `/etc` and a host file
/// placed in the share by the host; absolute symlinks it makes itself and
/// then follows, writes through, renames and hard-links; renames and hard
/// links across the share's edge; a host device node and a host hard link
/// placed in the share; mknod. Each gets the errno a local file system
/// would give, every symlink resolves in the guest, the daemon never opens
/// a device node for I/O, and nothing outside the share changes on the host.
#[test]
fn airlock_fs_path_escape_attempts_stay_in_the_share() {
    let mut rig = Rig::new("hardening_escape");
    let dir = rig.dir().to_path_buf();
    let share = dir.join("share");
    let outside = dir.join("outside");
    fs::create_dir_all(share.join("dir/sub")).unwrap();
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("secret.txt"), "HOST-SECRET\n").unwrap();
    fs::write(outside.join("linked.txt"), "outside, hard-linked in\n").unwrap();
    fs::write(share.join("data.txt"), "shared\n").unwrap();
    fs::write(share.join("dir/f"), "in dir\n").unwrap();
    let symlink =
        |target: &Path, name: &str| std::os::unix::fs::symlink(target, share.join(name)).unwrap();
    symlink(Path::new("/"), "root-link");
    symlink(Path::new("/etc"), "etc-link");
    symlink(&outside.join("secret.txt"), "secret-link");
    symlink(Path::new("../outside/secret.txt"), "up-link");
    fs::hard_link(outside.join("linked.txt"), share.join("hardlink-out")).unwrap();
    mknod(&share.join("hostnull"), libc::S_IFCHR, 1, 3);
    mknod(&share.join("hostblk"), libc::S_IFBLK, 7, 0);
    let host_root_names = ["airlock-escape-planted", "airlock-escape-renamed"];
    for name in host_root_names {
        assert!(
            !Path::new("/").join(name).exists(),
            "/{name} exists already"
        );
    }
    let before = snapshot(&outside);
    let (daemon, socket) = start_fs(&mut rig, &share, &[]);

    let secret = outside.join("secret.txt").display().to_string();
    let outside_dir = outside.display().to_string();
    let script = format!(
        r#"
P={PROBE}
mount -t virtiofs share /mnt || exit 1
touch /guest-root-marker
echo "dotdot inode $(stat -c %i /mnt/..) root inode $(stat -c %i /)"
$P errno open-read /mnt/../../outside/secret.txt
$P errno open-read /mnt/dir/../../outside/secret.txt
echo "root-link -> $(readlink /mnt/root-link): $(test -e /mnt/root-link/guest-root-marker && echo the guest root)"
echo "etc-link -> $(readlink /mnt/etc-link)"
$P errno open-read /mnt/etc-link/shadow
$P errno open-read /mnt/secret-link
$P errno open-read /mnt/up-link
$P errno open-nofollow /mnt/secret-link
$P errno symlink {secret} /mnt/g-abs
$P errno open-read /mnt/g-abs
mkdir -p {outside_dir}
echo guest-side > {secret}
echo "through g-abs: $(cat /mnt/g-abs)"
echo overwritten > /mnt/g-abs
echo "guest file now: $(cat {secret})"
$P errno symlink {outside_dir} /mnt/g-dir
$P errno create /mnt/g-dir/airlock-escape-planted
$P errno symlink / /mnt/g-root
$P errno create /mnt/g-root/airlock-escape-planted
$P errno rename /mnt/g-abs /mnt/g-abs2
$P errno link /mnt/g-abs2 /mnt/g-abs-hard
$P errno rename /mnt/dir /airlock-escape-renamed
$P errno rename /mnt/dir/f /tmp/f
echo local > /tmp/local
$P errno rename /tmp/local /mnt/local
cd /mnt/dir
$P errno rename sub ../../airlock-escape-renamed
cd /
$P errno rename /mnt/dir /mnt/dir/sub/inside
$P errno link /mnt/data.txt /tmp/hl
$P errno link /guest-root-marker /mnt/marker
$P errno link /mnt/hostnull /mnt/hostnull-hard
echo "hardlink-out: $(cat /mnt/hardlink-out)"
echo "hostnull: $(stat -c '%F %t:%T' /mnt/hostnull)"
echo "hostblk: $(stat -c '%F %t:%T' /mnt/hostblk)"
$P errno open-read /mnt/hostnull
$P errno open-write /mnt/hostnull
$P errno open-read /mnt/hostblk
$P errno truncate /mnt/hostnull
$P errno mknod-chr /mnt/newnull 1 3
$P errno mknod-blk /mnt/newblk 7 0
$P errno mkfifo /mnt/fifo
exec 3</mnt/hostnull 4</mnt/data.txt
echo HOLDING-DEVICE
read go
exec 3<&- 4<&-
ls -la /mnt | sed 's/^/ls: /'
umount /mnt
"#
    );
    let mut vm = rig.boot(airlock_e2e::VmConfig {
        script,
        qemu_args: airlock_e2e::fs_device_args(&socket, "share", 1024),
        files: vec![probe_file()],
        ..airlock_e2e::VmConfig::default()
    });
    let held = vm.wait_for("HOLDING-DEVICE", Duration::from_secs(150));
    // The guest holds the host's device node open: the daemon has no fd on
    // it but O_PATH ones (lookups), i.e. it never opened the device.
    // The daemon runs in its default sandbox (as root: --sandbox
    // namespace), where the share is /share: that is what its descriptors'
    // paths show.
    let inside = Path::new("/share");
    let flags = fd_flags_on(daemon.pid(), &inside.join("hostnull"));
    assert!(
        flags.iter().all(|f| f & libc::O_PATH as u32 != 0),
        "airlock-fs opened the host's device node: flags {flags:?}\n{held}"
    );
    // The regular file the guest holds open is open in the daemon too (so
    // the check above can see an open when there is one).
    let data = fd_flags_on(daemon.pid(), &inside.join("data.txt"));
    assert!(
        data.iter().any(|f| f & libc::O_PATH as u32 == 0),
        "no open fd on data.txt: {data:?}"
    );
    vm.send_line("go");
    let out = vm.wait();
    out.assert_success();
    let mut results = BTreeMap::new();
    for line in out.output.lines() {
        if let Some((call, result)) = line
            .strip_prefix("errno ")
            .and_then(|l| l.rsplit_once(": "))
        {
            results.insert(call.to_string(), result.to_string());
        }
    }
    eprintln!(
        "path escape probes:\n{}",
        results
            .iter()
            .map(|(c, r)| format!("  {c}: {r}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let expect = |call: &str, want: &str| {
        assert_eq!(
            results.get(call).map(String::as_str),
            Some(want),
            "{call}\n{}",
            out.output
        );
    };
    // `..` never leaves the guest's own tree.
    let line = out
        .output
        .lines()
        .find(|l| l.starts_with("dotdot inode"))
        .unwrap();
    let inodes: Vec<&str> = line
        .split_whitespace()
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(inodes.len(), 2, "{line}");
    assert_eq!(inodes[0], inodes[1], "/mnt/.. is not the guest's /: {line}");
    expect("open-read /mnt/../../outside/secret.txt", "ENOENT");
    expect("open-read /mnt/dir/../../outside/secret.txt", "ENOENT");
    // Host-made symlinks resolve in the guest.
    out.assert_contains("root-link -> /: the guest root\n")
        .assert_contains("etc-link -> /etc\n");
    expect("open-read /mnt/etc-link/shadow", "ENOENT");
    expect("open-read /mnt/secret-link", "ENOENT");
    expect("open-read /mnt/up-link", "ENOENT");
    expect("open-nofollow /mnt/secret-link", "ELOOP");
    // Guest-made absolute symlinks: stored verbatim, followed in the guest.
    expect(&format!("symlink {secret} /mnt/g-abs"), "ok");
    expect("open-read /mnt/g-abs", "ENOENT");
    out.assert_contains("through g-abs: guest-side\n")
        .assert_contains("guest file now: overwritten\n");
    expect(&format!("symlink {outside_dir} /mnt/g-dir"), "ok");
    expect("create /mnt/g-dir/airlock-escape-planted", "ok");
    expect("symlink / /mnt/g-root", "ok");
    expect("create /mnt/g-root/airlock-escape-planted", "ok");
    expect("rename /mnt/g-abs /mnt/g-abs2", "ok");
    expect("link /mnt/g-abs2 /mnt/g-abs-hard", "ok");
    // Renames and links across the share's edge: another file system.
    expect("rename /mnt/dir /airlock-escape-renamed", "EXDEV");
    expect("rename /mnt/dir/f /tmp/f", "EXDEV");
    expect("rename /tmp/local /mnt/local", "EXDEV");
    expect("rename sub ../../airlock-escape-renamed", "EXDEV");
    expect("rename /mnt/dir /mnt/dir/sub/inside", "EINVAL");
    expect("link /mnt/data.txt /tmp/hl", "EXDEV");
    expect("link /guest-root-marker /mnt/marker", "EXDEV");
    // Device nodes: the guest sees the host's node as its own device (the
    // guest kernel opens it; the daemon is never asked), cannot make new ones.
    out.assert_contains("hostnull: character special file 1:3\n")
        .assert_contains("hostblk: block special file 7:0\n")
        .assert_contains("hardlink-out: outside, hard-linked in\n");
    // Opening one is answered by the guest's own drivers: 1:3 is the
    // guest's null device; the guest has no block device 7:0.
    expect("open-read /mnt/hostnull", "ok");
    expect("open-write /mnt/hostnull", "ok");
    expect("open-read /mnt/hostblk", "ENXIO");
    expect("truncate /mnt/hostnull", "EINVAL");
    // A second name for it inside the share is just another name.
    expect("link /mnt/hostnull /mnt/hostnull-hard", "ok");
    expect("mknod-chr /mnt/newnull 1 3", "EPERM");
    expect("mknod-blk /mnt/newblk 7 0", "EPERM");
    expect("mkfifo /mnt/fifo", "ok");

    // On the host: the share holds what the guest made, as links and names;
    // the outside is untouched; nothing appeared at the host's root.
    assert_eq!(
        fs::read_link(share.join("g-abs2")).unwrap(),
        outside.join("secret.txt")
    );
    let hard = fs::symlink_metadata(share.join("g-abs-hard")).unwrap();
    assert!(
        hard.file_type().is_symlink() && hard.nlink() == 2,
        "{hard:?}"
    );
    assert_eq!(fs::read_link(share.join("g-dir")).unwrap(), outside);
    assert_eq!(fs::read_link(share.join("g-root")).unwrap(), Path::new("/"));
    assert!(share.join("dir/sub").is_dir() && share.join("dir/f").is_file());
    for name in ["newnull", "newblk", "local", "marker"] {
        assert!(!share.join(name).exists(), "{name} appeared in the share");
    }
    assert_eq!(
        fs::symlink_metadata(share.join("hostnull")).unwrap().rdev(),
        libc::makedev(1, 3)
    );
    assert_eq!(
        snapshot(&outside),
        before,
        "something outside the share changed"
    );
    assert_eq!(
        fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "HOST-SECRET\n"
    );
    for name in host_root_names {
        assert!(
            !Path::new("/").join(name).exists(),
            "/{name} appeared on the host"
        );
    }
    assert!(daemon.is_running());
}

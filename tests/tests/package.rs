//! The Debian package: `scripts/package` builds airlock_VERSION_ARCH.deb
//! from the test profile's binaries; its files are unpacked into a
//! throwaway root (`dpkg -x`) and checked, the unpacked airlock-net runs,
//! and lintian finds no error in it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use airlock_e2e::{workspace_root, Rig};

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/install-deps installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Builds the package into `dir` and returns its path.
fn build_deb(dir: &Path) -> PathBuf {
    let mut bin_dir = None;
    for bin in [
        "airlock-net",
        "airlock-fs",
        "airlock-proxy",
        "airlock",
        "airlock-man",
    ] {
        bin_dir = Rig::bin(bin).parent().map(Path::to_path_buf);
    }
    let bin_dir = bin_dir.unwrap();
    let out = run(Command::new(workspace_root().join("scripts/package"))
        .arg("--no-build")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(dir));
    let deb = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(deb.exists(), "{} was not built", deb.display());
    deb
}

#[test]
fn debian_package_has_the_layout_and_passes_lintian() {
    let rig = Rig::new("package");
    let deb = build_deb(rig.dir());
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    let arch =
        String::from_utf8(run(Command::new("dpkg").arg("--print-architecture")).stdout).unwrap();
    assert!(
        name.starts_with("airlock_") && name.ends_with(&format!("_{}.deb", arch.trim())),
        "{name}"
    );

    // No maintainer scripts: nothing is enabled or started at install.
    let control = rig.dir().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let mut scripts: Vec<String> = fs::read_dir(&control)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    scripts.sort();
    assert_eq!(scripts, ["control", "md5sums"]);

    let root = rig.dir().join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
    for file in [
        "usr/bin/airlock-net",
        "usr/bin/airlock-fs",
        "usr/bin/airlock-proxy",
        "usr/bin/airlock",
        "usr/share/man/man1/airlock-net.1.gz",
        "usr/share/man/man1/airlock-fs.1.gz",
        "usr/share/man/man1/airlock-proxy.1.gz",
        "usr/share/man/man1/airlock.1.gz",
        "lib/systemd/system/airlock-net@.service",
        "lib/systemd/system/airlock-net@.socket",
        "lib/systemd/system/airlock-fs@.service",
        "lib/systemd/system/airlock-fs@.socket",
        "lib/systemd/system/airlock-proxy@.service",
        "usr/share/qemu/vhost-user/50-airlock-net.json",
        "usr/share/qemu/vhost-user/50-airlock-fs.json",
        "usr/share/doc/airlock/examples/airlock-net.toml",
        "usr/share/doc/airlock/examples/airlock-fs.toml",
        "usr/share/doc/airlock/examples/airlock-proxy.toml",
        "usr/share/doc/airlock/copyright",
        "usr/share/doc/airlock/changelog.gz",
        "usr/share/doc/airlock/README.md.gz",
    ] {
        assert!(root.join(file).exists(), "the package lacks /{file}");
    }
    // The units and descriptors name the packaged binaries.
    let unit = fs::read_to_string(root.join("lib/systemd/system/airlock-net@.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/airlock-net "), "{unit}");
    let descriptor =
        fs::read_to_string(root.join("usr/share/qemu/vhost-user/50-airlock-net.json")).unwrap();
    assert!(
        descriptor.contains("\"/usr/bin/airlock-net\""),
        "{descriptor}"
    );
    assert_eq!(
        fs::read_link(root.join("usr/lib/airlock/passt")).unwrap(),
        Path::new("../../bin/airlock-net")
    );

    // The unpacked binary runs, under both of its names.
    let caps = run(Command::new(root.join("usr/bin/airlock-net")).arg("--print-capabilities"));
    assert_eq!(
        String::from_utf8_lossy(&caps.stdout).trim(),
        r#"{"type":"net"}"#
    );
    let version = run(Command::new(root.join("usr/lib/airlock/passt")).arg("--version"));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("passt (airlock-net "));

    // lintian: no errors (warnings are listed in docs/packaging.md).
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0", "--allow-root"])
        .arg(&deb)
        .output()
        .expect("cannot run lintian (scripts/install-deps installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{report}");
    eprintln!("lintian:\n{report}");
}

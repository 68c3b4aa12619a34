//! The cached guest image built by `scripts/build-guest`, and the workspace
//! binaries the tests run: both are brought up to date once per test process.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::{env, fs};

/// The files of the guest built by `scripts/build-guest`.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The kernel QEMU boots: the uncompressed ELF `vmlinux` (PVH boot, ~4 s
    /// faster under TCG than the bzImage) when the build produced one, else
    /// `vmlinuz`.
    pub kernel: PathBuf,
    /// The cached initramfs (lz4-compressed `newc` cpio).
    pub initramfs: PathBuf,
    /// The guest kernel's `uname -r`, e.g. `6.1.0-56-amd64`.
    pub kernel_release: String,
}

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent", manifest_dir.display()))
        .to_path_buf()
}

/// Where the guest is cached: `$AIRLOCK_GUEST_DIR`, by default
/// `<workspace>/target/guest` (the same default as `scripts/build-guest`).
pub fn guest_dir() -> PathBuf {
    match env::var_os("AIRLOCK_GUEST_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target").join("guest"),
    }
}

/// The guest image, built (or found up to date) by running
/// `scripts/build-guest` on first use in this process. Panics with the
/// script's output if it fails.
pub fn guest_image() -> &'static GuestImage {
    static IMAGE: OnceLock<Result<GuestImage, String>> = OnceLock::new();
    match IMAGE.get_or_init(build_guest) {
        Ok(image) => image,
        Err(message) => panic!("{message}"),
    }
}

fn build_guest() -> Result<GuestImage, String> {
    let script = workspace_root().join("scripts").join("build-guest");
    let dir = guest_dir();
    let output = Command::new(&script)
        .env("AIRLOCK_GUEST_DIR", &dir)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    // Progress lines of a real build are worth seeing in a test log.
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    let vmlinux = dir.join("vmlinux");
    let kernel = if vmlinux.is_file() {
        vmlinux
    } else {
        dir.join("vmlinuz")
    };
    let release_file = dir.join("kernel-release");
    let kernel_release = fs::read_to_string(&release_file)
        .map_err(|e| format!("cannot read {}: {e}", release_file.display()))?
        .trim()
        .to_string();
    let image = GuestImage {
        kernel,
        initramfs: dir.join("initramfs.cpio.lz4"),
        kernel_release,
    };
    for file in [&image.kernel, &image.initramfs] {
        if !file.is_file() {
            return Err(format!(
                "{} succeeded but {} is missing",
                script.display(),
                file.display()
            ));
        }
    }
    Ok(image)
}

/// Where cargo put this test binary's sibling executables, and how to ask
/// cargo to build them the same way.
struct BuildLayout {
    /// `<target>/<profile>` (or `<target>/<triple>/<profile>`).
    bin_dir: PathBuf,
    /// Extra `cargo build` arguments reproducing the test binary's profile,
    /// target and target directory.
    cargo_args: Vec<OsString>,
}

/// Works out the layout from the test binary's own path,
/// `<target>[/<triple>]/<profile>/deps/<test-binary>`.
fn build_layout() -> Result<BuildLayout, String> {
    let exe = env::current_exe().map_err(|e| format!("cannot find the test executable: {e}"))?;
    let deps = exe
        .parent()
        .filter(|d| d.ends_with("deps"))
        .ok_or_else(|| {
            format!(
                "{} is not in a cargo deps directory; cannot locate workspace binaries",
                exe.display()
            )
        })?;
    let bin_dir = deps
        .parent()
        .ok_or_else(|| format!("{} has no parent", deps.display()))?
        .to_path_buf();
    let profile = bin_dir
        .file_name()
        .and_then(|p| p.to_str())
        .ok_or_else(|| format!("cannot tell the profile from {}", bin_dir.display()))?;
    let mut cargo_args: Vec<OsString> = Vec::new();
    match profile {
        "debug" => {}
        "release" => cargo_args.push("--release".into()),
        other => {
            cargo_args.push("--profile".into());
            cargo_args.push(other.into());
        }
    }
    let parent = bin_dir
        .parent()
        .ok_or_else(|| format!("{} has no parent", bin_dir.display()))?;
    // `--target <triple>` builds put a triple directory between the target
    // directory and the profile. Cargo keeps `.rustc_info.json` in the
    // target directory itself (CACHEDIR.TAG only when cargo created the
    // directory, which it did not if scripts/build-guest got there first).
    let is_target_dir =
        |d: &Path| d.join(".rustc_info.json").exists() || d.join("CACHEDIR.TAG").exists();
    let target_dir = if is_target_dir(parent) {
        parent.to_path_buf()
    } else {
        let triple = parent.file_name().unwrap_or_default();
        let target_dir = parent
            .parent()
            .ok_or_else(|| format!("{} has no parent", parent.display()))?;
        cargo_args.push("--target".into());
        cargo_args.push(triple.into());
        target_dir.to_path_buf()
    };
    cargo_args.push("--target-dir".into());
    cargo_args.push(target_dir.into());
    Ok(BuildLayout {
        bin_dir,
        cargo_args,
    })
}

/// Path of the workspace binary `name`, after `cargo build --bin <name>`
/// (with the test binary's profile, target and target directory) brought it
/// up to date; built once per process and name. Only the package owning the
/// binary is built, so a test of one daemon does not depend on the others
/// compiling.
pub(crate) fn workspace_bin(name: &str) -> Result<PathBuf, String> {
    static BUILT: Mutex<BTreeMap<String, Result<PathBuf, String>>> = Mutex::new(BTreeMap::new());
    // Held during the build: concurrent tests wait for one cargo run
    // instead of queueing on cargo's own lock.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built
        .entry(name.to_string())
        .or_insert_with(|| build_workspace_bin(name))
        .clone()
}

fn build_workspace_bin(name: &str) -> Result<PathBuf, String> {
    let layout = build_layout()?;
    // Cargo tells the processes it runs where it is; fall back to the cargo
    // that built us, then to PATH.
    let cargo = env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(OsString::from))
        .unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--quiet", "--bin", name])
        .args(&layout.cargo_args);
    eprintln!("airlock-e2e: building {name}: {command:?}");
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cannot build workspace binary {name:?} ({}): {command:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let path = layout.bin_dir.join(name);
    if !path.is_file() {
        return Err(format!(
            "{command:?} succeeded but {} does not exist",
            path.display()
        ));
    }
    Ok(path)
}

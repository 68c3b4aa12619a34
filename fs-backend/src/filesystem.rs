//! `AirlockFs`: fuse-backend-rs' `PassthroughFs` with what Airlock adds at the
//! `FileSystem` boundary — transport-free, so all of it is unit-tested
//! without a VM:
//!
//! - **read-only shares**: every mutating request fails with `EROFS`;
//! - **id translation** (`--translate-uid/--translate-gid`): caller ids and
//!   new owners go guest → host, returned attributes go host → guest;
//! - **device nodes**: the guest may not create character or block devices
//!   on the host (`EPERM`) unless `--allow-device-nodes`; opening special
//!   files is refused by `PassthroughFs` either way (CVE-2020-35517);
//! - **submounts** (`--announce-submounts`): entries on a different device
//!   than their parent carry `FUSE_ATTR_SUBMOUNT`;
//! - **audit log**: one JSON line per mutating operation.
//!
//! Path confinement itself comes from `PassthroughFs`: every lookup is an
//! `openat(parent_fd, name, O_PATH | O_NOFOLLOW)` of a single component
//! (names with `/` are rejected, `..` at the root resolves to the root), so
//! the host never follows a guest-made symlink.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_common::audit::AuditLog;
use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid, ATTR_SUBMOUNT,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::PassthroughFs;
use serde_json::{json, Map, Value};

use crate::idmap::{IdMap, ToHost};

type Inode = u64;
type Handle = u64;

/// Largest extended attribute value and name list Linux has (`XATTR_SIZE_MAX`,
/// `XATTR_LIST_MAX` in linux/limits.h). The passthrough allocates the
/// guest's GETXATTR/LISTXATTR size up front — 4 GiB for `u32::MAX`, an
/// abort where memory is tight — so sizes are capped here; no answer
/// changes, as the kernel never returns more.
const XATTR_SIZE_MAX: u32 = 64 * 1024;
const XATTR_LIST_MAX: u32 = 64 * 1024;

/// What `AirlockFs` adds over the passthrough file system.
pub struct Policy {
    pub readonly: bool,
    pub uid_map: IdMap,
    pub gid_map: IdMap,
    pub announce_submounts: bool,
    pub audit: Option<Arc<AuditLog>>,
}

pub struct AirlockFs {
    inner: PassthroughFs<()>,
    policy: Policy,
    /// The shared directory as /proc shows it, to make audit paths relative.
    share_root: PathBuf,
    /// The open flags of every file handle, passed on READ and WRITE in
    /// place of the request's (see [`AirlockFs::open_flags`]).
    handle_flags: Mutex<HashMap<Handle, u32>>,
    /// `--allow-device-nodes`: MKNOD may make character and block devices
    /// (see [`AirlockFs::allow_device_nodes`]).
    allow_device_nodes: bool,
}

fn err<T>(errno: i32) -> io::Result<T> {
    Err(io::Error::from_raw_os_error(errno))
}

/// Access mode bits and flags that make an open modify the file.
fn open_writes(flags: u32) -> bool {
    let flags = flags as i32;
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Errno names for audit records.
fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EIO) => "EIO",
        Some(libc::EBADF) => "EBADF",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EEXIST) => "EEXIST",
        Some(libc::EXDEV) => "EXDEV",
        Some(libc::ENOTDIR) => "ENOTDIR",
        Some(libc::EISDIR) => "EISDIR",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENOSPC) => "ENOSPC",
        Some(libc::EROFS) => "EROFS",
        Some(libc::EMLINK) => "EMLINK",
        Some(libc::ENAMETOOLONG) => "ENAMETOOLONG",
        Some(libc::ENOTEMPTY) => "ENOTEMPTY",
        Some(libc::ELOOP) => "ELOOP",
        Some(libc::ENOSYS) => "ENOSYS",
        Some(libc::ENODATA) => "ENODATA",
        Some(libc::ENOTSUP) => "ENOTSUP",
        Some(libc::EDQUOT) => "EDQUOT",
        Some(libc::EMFILE) => "EMFILE",
        Some(libc::ENFILE) => "ENFILE",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(n) => return format!("errno {n}"),
        None => return e.to_string(),
    };
    name.to_owned()
}

/// Bytes as text for the audit log: UTF-8 kept, other bytes as `\xNN`.
fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // `good` is valid UTF-8 up to `valid_up_to`, so this never falls back.
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len()).max(1);
                for b in &bad[..n] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                rest = &bad[n..];
            }
        }
    }
}

impl AirlockFs {
    /// Wraps `inner`, which serves `share_root`.
    pub fn new(inner: PassthroughFs<()>, share_root: &Path, policy: Policy) -> Self {
        AirlockFs {
            inner,
            policy,
            share_root: share_root.to_owned(),
            handle_flags: Mutex::new(HashMap::new()),
            allow_device_nodes: false,
        }
    }

    /// Lets MKNOD make character and block devices (`--allow-device-nodes`).
    /// They are never opened here either way: `PassthroughFs` refuses to
    /// open special files, and the sandbox mounts the share `nodev`.
    pub fn allow_device_nodes(mut self, allow: bool) -> Self {
        self.allow_device_nodes = allow;
        self
    }

    /// The flags file handle `handle` was opened with, for READ and WRITE;
    /// EBADF for anything else (a directory handle, a made-up number).
    ///
    /// fuse-backend-rs 0.14 applies a request's flags to the host fd with
    /// `fcntl(F_SETFL)` when they differ from the handle's, and if that
    /// fails (O_DIRECT on a directory or on tmpfs, O_NOATIME on another's
    /// file, clearing O_APPEND on an append-only one) it returns with the
    /// handle's fd already closed: its borrowed `File` is dropped before it
    /// is wrapped in `ManuallyDrop`. The handle then names a closed fd, or
    /// whatever the number is reused for, and RELEASE closes that. Passing
    /// the open flags makes the check a no-op: the host fd keeps the flags
    /// it was opened with, as in virtiofsd, which ignores READ's flags and
    /// takes only O_APPEND from WRITE's.
    fn open_flags(&self, handle: Handle) -> io::Result<u32> {
        self.handle_flags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&handle)
            .copied()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    fn forget_flags(&self, handle: Handle) {
        self.handle_flags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&handle);
    }

    fn remember_flags(&self, handle: Option<Handle>, flags: u32) {
        if let Some(h) = handle {
            self.handle_flags
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(h, flags);
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.policy.readonly {
            return err(libc::EROFS);
        }
        Ok(())
    }

    fn host_uid(&self, uid: u32) -> io::Result<u32> {
        match self.policy.uid_map.to_host(uid) {
            ToHost::Id(id) => Ok(id),
            ToHost::Forbidden => err(libc::EPERM),
        }
    }

    fn host_gid(&self, gid: u32) -> io::Result<u32> {
        match self.policy.gid_map.to_host(gid) {
            ToHost::Id(id) => Ok(id),
            ToHost::Forbidden => err(libc::EPERM),
        }
    }

    /// The caller's context with its ids translated to the host's.
    fn host_ctx(&self, ctx: &Context) -> io::Result<Context> {
        let mut out = *ctx;
        out.uid = self.host_uid(ctx.uid)?;
        out.gid = self.host_gid(ctx.gid)?;
        Ok(out)
    }

    fn guest_stat(&self, mut st: stat64) -> stat64 {
        st.st_uid = self.policy.uid_map.to_guest(st.st_uid);
        st.st_gid = self.policy.gid_map.to_guest(st.st_gid);
        st
    }

    fn guest_entry(&self, mut e: Entry) -> Entry {
        e.attr = self.guest_stat(e.attr);
        e
    }

    /// Marks `e` as a submount if it lives on another device than `parent_dev`.
    fn mark_submount(&self, e: &mut Entry, parent_dev: Option<u64>) {
        if let Some(dev) = parent_dev {
            if e.inode != 0
                && e.attr.st_dev != dev
                && (e.attr.st_mode & libc::S_IFMT) == libc::S_IFDIR
            {
                e.attr_flags |= ATTR_SUBMOUNT;
            }
        }
    }

    fn parent_dev(&self, ctx: &Context, parent: Inode) -> Option<u64> {
        if !self.policy.announce_submounts {
            return None;
        }
        self.inner
            .getattr(ctx, parent, None)
            .ok()
            .map(|(st, _)| st.st_dev)
    }

    /// Path of `inode` relative to the share, for audit records.
    fn path_of(&self, inode: Inode) -> String {
        match self.inner.readlinkat_proc_file(inode) {
            Ok(p) => match p.strip_prefix(&self.share_root) {
                Ok(rel) if rel.as_os_str().is_empty() => ".".to_owned(),
                Ok(rel) => escape_bytes(rel.as_os_str().as_bytes()),
                Err(_) => escape_bytes(p.as_os_str().as_bytes()),
            },
            Err(_) => format!("<inode {inode}>"),
        }
    }

    fn child_path(&self, parent: Inode, name: &CStr) -> String {
        let dir = self.path_of(parent);
        let name = escape_bytes(name.to_bytes());
        if dir == "." {
            name
        } else {
            format!("{dir}/{name}")
        }
    }

    /// Writes one audit record if auditing is on. `fields` builds the
    /// op-specific fields lazily so a share without audit pays nothing.
    fn audit<T>(
        &self,
        ctx: &Context,
        op: &str,
        result: &io::Result<T>,
        fields: impl FnOnce() -> Map<String, Value>,
    ) {
        let Some(log) = &self.policy.audit else {
            return;
        };
        let mut rec = Map::new();
        rec.insert("op".into(), json!(op));
        rec.extend(fields());
        rec.insert("uid".into(), json!(ctx.uid));
        rec.insert("gid".into(), json!(ctx.gid));
        rec.insert("pid".into(), json!(ctx.pid));
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(e) => errno_name(e),
        };
        rec.insert("result".into(), json!(outcome));
        log.record(Value::Object(rec));
    }
}

fn fields(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn octal(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

impl FileSystem for AirlockFs {
    type Inode = Inode;
    type Handle = Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut opts = self.inner.init(capable)?;
        // Without these the server answers INIT with max_write = 4 KiB and
        // the guest splits every write into 4 KiB FUSE_WRITEs (a quarter of
        // the C virtiofsd's sequential write speed, measured). With them it
        // sends up to 256 pages (1 MiB) per request, as the C and Rust
        // virtiofsd let it; indirect descriptors keep such chains within
        // any queue size.
        opts |= capable & (FsOptions::BIG_WRITES | FsOptions::MAX_PAGES);
        // There is no DAX window (no shared cache region is set up), so
        // per-file DAX must not be offered.
        opts.remove(FsOptions::PERFILE_DAX);
        if self.policy.readonly {
            // Nothing will be written back; don't let the guest batch writes.
            opts.remove(FsOptions::WRITEBACK_CACHE);
        }
        if self.policy.announce_submounts {
            if capable.contains(FsOptions::SUBMOUNTS) {
                opts |= FsOptions::SUBMOUNTS;
            } else {
                log::warn!("--announce-submounts: the guest kernel does not support submounts");
            }
        }
        Ok(opts)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        let mut e = self.inner.lookup(ctx, parent, name)?;
        let dev = self.parent_dev(ctx, parent);
        self.mark_submount(&mut e, dev);
        Ok(self.guest_entry(e))
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(stat64, Duration)> {
        let (st, t) = self.inner.getattr(ctx, inode, handle)?;
        Ok((self.guest_stat(st), t))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Inode,
        attr: stat64,
        handle: Option<Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let res = (|| {
            self.check_writable()?;
            let hctx = self.host_ctx(ctx)?;
            let mut host_attr = attr;
            if valid.contains(SetattrValid::UID) {
                host_attr.st_uid = self.host_uid(attr.st_uid)?;
            }
            if valid.contains(SetattrValid::GID) {
                host_attr.st_gid = self.host_gid(attr.st_gid)?;
            }
            let (st, t) = self.inner.setattr(&hctx, inode, host_attr, handle, valid)?;
            Ok((self.guest_stat(st), t))
        })();
        self.audit(ctx, "setattr", &res, || {
            let mut f = fields(&[("path", json!(self.path_of(inode)))]);
            if valid.contains(SetattrValid::MODE) {
                f.insert("mode".into(), json!(octal(attr.st_mode)));
            }
            if valid.contains(SetattrValid::UID) {
                f.insert("owner_uid".into(), json!(attr.st_uid));
            }
            if valid.contains(SetattrValid::GID) {
                f.insert("owner_gid".into(), json!(attr.st_gid));
            }
            if valid.contains(SetattrValid::SIZE) {
                f.insert("size".into(), json!(attr.st_size));
            }
            if valid.intersects(SetattrValid::ATIME | SetattrValid::ATIME_NOW) {
                f.insert("atime".into(), json!(true));
            }
            if valid.intersects(SetattrValid::MTIME | SetattrValid::MTIME_NOW) {
                f.insert("mtime".into(), json!(true));
            }
            f
        });
        res
    }

    fn readlink(&self, ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        let res = (|| {
            self.check_writable()?;
            let hctx = self.host_ctx(ctx)?;
            Ok(self.guest_entry(self.inner.symlink(&hctx, linkname, parent, name)?))
        })();
        self.audit(ctx, "symlink", &res, || {
            fields(&[
                ("path", json!(self.child_path(parent, name))),
                ("target", json!(escape_bytes(linkname.to_bytes()))),
            ])
        });
        res
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let res = (|| {
            self.check_writable()?;
            // A device node on the host is a way out of the share (for
            // anyone on the host who opens it): refuse to create one unless
            // the admin allowed it.
            let kind = mode & libc::S_IFMT;
            if (kind == libc::S_IFCHR || kind == libc::S_IFBLK) && !self.allow_device_nodes {
                return err(libc::EPERM);
            }
            let hctx = self.host_ctx(ctx)?;
            Ok(self.guest_entry(self.inner.mknod(&hctx, parent, name, mode, rdev, umask)?))
        })();
        self.audit(ctx, "mknod", &res, || {
            fields(&[
                ("path", json!(self.child_path(parent, name))),
                ("mode", json!(octal(mode))),
                ("type", json!(format!("{:o}", (mode & libc::S_IFMT) >> 12))),
            ])
        });
        res
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let res = (|| {
            self.check_writable()?;
            let hctx = self.host_ctx(ctx)?;
            Ok(self.guest_entry(self.inner.mkdir(&hctx, parent, name, mode, umask)?))
        })();
        self.audit(ctx, "mkdir", &res, || {
            fields(&[
                ("path", json!(self.child_path(parent, name))),
                ("mode", json!(octal(mode & !umask))),
            ])
        });
        res
    }

    fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        // Resolve the path before the entry disappears.
        let path = self
            .policy
            .audit
            .as_ref()
            .map(|_| self.child_path(parent, name));
        let res = self
            .check_writable()
            .and_then(|()| self.inner.unlink(&self.host_ctx(ctx)?, parent, name));
        self.audit(ctx, "unlink", &res, || fields(&[("path", json!(path))]));
        res
    }

    fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        let path = self
            .policy
            .audit
            .as_ref()
            .map(|_| self.child_path(parent, name));
        let res = self
            .check_writable()
            .and_then(|()| self.inner.rmdir(&self.host_ctx(ctx)?, parent, name));
        self.audit(ctx, "rmdir", &res, || fields(&[("path", json!(path))]));
        res
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let paths = self.policy.audit.as_ref().map(|_| {
            (
                self.child_path(olddir, oldname),
                self.child_path(newdir, newname),
            )
        });
        let res = self.check_writable().and_then(|()| {
            self.inner.rename(
                &self.host_ctx(ctx)?,
                olddir,
                oldname,
                newdir,
                newname,
                flags,
            )
        });
        self.audit(ctx, "rename", &res, || {
            let (from, to) = paths.unwrap_or_default();
            let mut f = fields(&[("path", json!(from)), ("to", json!(to))]);
            if flags != 0 {
                f.insert("flags".into(), json!(flags));
            }
            f
        });
        res
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        let res = (|| {
            self.check_writable()?;
            let hctx = self.host_ctx(ctx)?;
            Ok(self.guest_entry(self.inner.link(&hctx, inode, newparent, newname)?))
        })();
        self.audit(ctx, "link", &res, || {
            fields(&[
                ("path", json!(self.child_path(newparent, newname))),
                ("target", json!(self.path_of(inode))),
            ])
        });
        res
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        if !open_writes(flags) {
            let res = self.inner.open(ctx, inode, flags, fuse_flags);
            if let Ok((handle, _, _)) = &res {
                self.remember_flags(*handle, flags);
            }
            return res;
        }
        let res = self.check_writable().and_then(|()| {
            self.inner
                .open(&self.host_ctx(ctx)?, inode, flags, fuse_flags)
        });
        if let Ok((handle, _, _)) = &res {
            self.remember_flags(*handle, flags);
        }
        self.audit(ctx, "open", &res, || {
            let mode = if flags as i32 & libc::O_TRUNC != 0 {
                "write,truncate"
            } else {
                "write"
            };
            fields(&[
                ("path", json!(self.path_of(inode))),
                ("access", json!(mode)),
            ])
        });
        res
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Handle>, OpenOptions, Option<u32>)> {
        let res = (|| {
            self.check_writable()?;
            let hctx = self.host_ctx(ctx)?;
            let (e, h, o, p) = self.inner.create(&hctx, parent, name, args)?;
            self.remember_flags(h, args.flags);
            Ok((self.guest_entry(e), h, o, p))
        })();
        self.audit(ctx, "create", &res, || {
            fields(&[
                ("path", json!(self.child_path(parent, name))),
                ("mode", json!(octal(args.mode & !args.umask))),
            ])
        });
        res
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        _requested_flags: u32,
    ) -> io::Result<usize> {
        let flags = self.open_flags(handle)?;
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        _requested_flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        // A read-only share never hands out a writable handle; this guards
        // a guest that forges a write on a read handle.
        self.check_writable()?;
        let flags = self.open_flags(handle)?;
        self.inner.write(
            &self.host_ctx(ctx)?,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.check_writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let res = self
            .inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner);
        if res.is_ok() {
            self.forget_flags(handle);
        }
        res
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<statvfs64> {
        let mut st = self.inner.statfs(ctx, inode)?;
        if self.policy.readonly {
            st.f_flag |= libc::ST_RDONLY;
        }
        Ok(st)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let res = self.check_writable().and_then(|()| {
            self.inner
                .setxattr(&self.host_ctx(ctx)?, inode, name, value, flags)
        });
        self.audit(ctx, "setxattr", &res, || {
            fields(&[
                ("path", json!(self.path_of(inode))),
                ("name", json!(escape_bytes(name.to_bytes()))),
                ("size", json!(value.len())),
            ])
        });
        res
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner
            .getxattr(ctx, inode, name, size.min(XATTR_SIZE_MAX))
    }

    fn listxattr(&self, ctx: &Context, inode: Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_LIST_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        let res = self
            .check_writable()
            .and_then(|()| self.inner.removexattr(&self.host_ctx(ctx)?, inode, name));
        self.audit(ctx, "removexattr", &res, || {
            fields(&[
                ("path", json!(self.path_of(inode))),
                ("name", json!(escape_bytes(name.to_bytes()))),
            ])
        });
        res
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let dev = self.parent_dev(ctx, inode);
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, &mut |d, mut e| {
                self.mark_submount(&mut e, dev);
                add_entry(d, self.guest_entry(e))
            })
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        let res = self.inner.releasedir(ctx, inode, flags, handle);
        if res.is_ok() {
            // A file handle released as a directory is gone all the same.
            self.forget_flags(handle);
        }
        res
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        if self.policy.readonly && mask & (libc::W_OK as u32) != 0 {
            return err(libc::EROFS);
        }
        self.inner.access(&self.host_ctx(ctx)?, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        self.inner
            .ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::Rule;
    use fuse_backend_rs::api::filesystem::ROOT_ID;
    use fuse_backend_rs::passthrough::Config as PassthroughConfig;
    use std::ffi::CString;
    use std::os::unix::fs::MetadataExt;

    struct Fixture {
        dir: tempfile::TempDir,
        fs: AirlockFs,
        audit_path: std::path::PathBuf,
    }

    fn fixture(readonly: bool, uid_rules: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        let share = std::fs::canonicalize(&share).unwrap();
        let audit_path = dir.path().join("audit.jsonl");
        let inner = PassthroughFs::new(PassthroughConfig {
            root_dir: share.to_string_lossy().into_owned(),
            xattr: true,
            do_import: true,
            ..Default::default()
        })
        .unwrap();
        let rules: Vec<Rule> = uid_rules.iter().map(|r| r.parse().unwrap()).collect();
        let fs = AirlockFs::new(
            inner,
            &share,
            Policy {
                readonly,
                uid_map: IdMap::new(&rules).unwrap(),
                gid_map: IdMap::default(),
                announce_submounts: false,
                audit: Some(Arc::new(AuditLog::open(&audit_path).unwrap())),
            },
        );
        fs.init(FsOptions::empty()).unwrap();
        Fixture {
            dir,
            fs,
            audit_path,
        }
    }

    impl Fixture {
        fn share(&self) -> std::path::PathBuf {
            self.dir.path().join("share")
        }

        fn audit(&self) -> Vec<Value> {
            std::fs::read_to_string(&self.audit_path)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
        r.unwrap_err().raw_os_error().unwrap()
    }

    fn create_args(mode: u32) -> CreateIn {
        CreateIn {
            flags: (libc::O_RDWR | libc::O_CREAT) as u32,
            mode: libc::S_IFREG | mode,
            umask: 0o022,
            fuse_flags: 0,
        }
    }

    fn root() -> Context {
        Context::new()
    }

    #[test]
    fn init_asks_for_large_requests_only_when_the_guest_offers_them() {
        let f = fixture(false, &[]);
        let large = FsOptions::BIG_WRITES | FsOptions::MAX_PAGES;
        let opts = f.fs.init(large | FsOptions::ASYNC_READ).unwrap();
        assert!(opts.contains(large), "{opts:?}");
        let opts = f.fs.init(FsOptions::ASYNC_READ).unwrap();
        assert!(!opts.intersects(large), "{opts:?}");
    }

    #[test]
    fn readonly_share_refuses_every_modification_with_erofs() {
        let f = fixture(true, &[]);
        std::fs::write(f.share().join("existing"), b"data").unwrap();
        std::fs::create_dir(f.share().join("dir")).unwrap();
        let ctx = root();
        let file = f.fs.lookup(&ctx, ROOT_ID, &c("existing")).unwrap().inode;
        let dir = f.fs.lookup(&ctx, ROOT_ID, &c("dir")).unwrap().inode;

        assert_eq!(
            errno(f.fs.create(&ctx, ROOT_ID, &c("new"), create_args(0o644))),
            libc::EROFS
        );
        assert_eq!(
            errno(f.fs.mkdir(&ctx, ROOT_ID, &c("d2"), 0o755, 0)),
            libc::EROFS
        );
        assert_eq!(
            errno(f.fs.mknod(&ctx, ROOT_ID, &c("p"), libc::S_IFIFO | 0o644, 0, 0)),
            libc::EROFS
        );
        assert_eq!(
            errno(f.fs.symlink(&ctx, &c("existing"), ROOT_ID, &c("l"))),
            libc::EROFS
        );
        assert_eq!(
            errno(f.fs.link(&ctx, file, ROOT_ID, &c("hard"))),
            libc::EROFS
        );
        assert_eq!(
            errno(f.fs.unlink(&ctx, ROOT_ID, &c("existing"))),
            libc::EROFS
        );
        assert_eq!(errno(f.fs.rmdir(&ctx, ROOT_ID, &c("dir"))), libc::EROFS);
        assert_eq!(
            errno(f.fs.rename(&ctx, ROOT_ID, &c("existing"), dir, &c("moved"), 0)),
            libc::EROFS
        );
        // SAFETY: all-zero is a valid stat64.
        let mut attr: stat64 = unsafe { std::mem::zeroed() };
        attr.st_mode = 0o777;
        assert_eq!(
            errno(f.fs.setattr(&ctx, file, attr, None, SetattrValid::MODE)),
            libc::EROFS
        );
        assert_eq!(
            errno(f.fs.setxattr(&ctx, file, &c("user.k"), b"v", 0)),
            libc::EROFS
        );
        assert_eq!(
            errno(f.fs.removexattr(&ctx, file, &c("user.k"))),
            libc::EROFS
        );
        for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
            assert_eq!(errno(f.fs.open(&ctx, file, flags as u32, 0)), libc::EROFS);
        }
        assert_eq!(
            errno(f.fs.access(&ctx, file, libc::W_OK as u32)),
            libc::EROFS
        );
        // Reading still works, and statfs says read-only.
        let (h, _, _) = f.fs.open(&ctx, file, libc::O_RDONLY as u32, 0).unwrap();
        assert!(h.is_some());
        assert_ne!(
            f.fs.statfs(&ctx, ROOT_ID).unwrap().f_flag & libc::ST_RDONLY,
            0
        );
        // Nothing changed on the host.
        assert_eq!(std::fs::read(f.share().join("existing")).unwrap(), b"data");
        assert!(!f.share().join("new").exists());
        // Refusals are audited.
        let recs = f.audit();
        assert!(recs
            .iter()
            .any(|r| r["op"] == "unlink" && r["result"] == "EROFS" && r["path"] == "existing"));
    }

    #[test]
    fn audit_records_modifications_with_share_relative_paths() {
        let f = fixture(false, &[]);
        let ctx = root();
        let dir =
            f.fs.mkdir(&ctx, ROOT_ID, &c("sub"), 0o755, 0o022)
                .unwrap()
                .inode;
        let (e, _, _, _) =
            f.fs.create(&ctx, dir, &c("a.txt"), create_args(0o640))
                .unwrap();
        f.fs.rename(&ctx, dir, &c("a.txt"), ROOT_ID, &c("b.txt"), 0)
            .unwrap();
        assert_eq!(
            errno(f.fs.unlink(&ctx, ROOT_ID, &c("missing"))),
            libc::ENOENT
        );
        f.fs.setxattr(&ctx, e.inode, &c("user.tag"), b"1", 0)
            .unwrap();
        f.fs.unlink(&ctx, ROOT_ID, &c("b.txt")).unwrap();
        let recs = f.audit();
        let ops: Vec<(String, String, String)> = recs
            .iter()
            .map(|r| {
                (
                    r["op"].as_str().unwrap().to_owned(),
                    r["path"].as_str().unwrap_or("").to_owned(),
                    r["result"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            ops,
            vec![
                ("mkdir".into(), "sub".into(), "ok".into()),
                ("create".into(), "sub/a.txt".into(), "ok".into()),
                ("rename".into(), "sub/a.txt".into(), "ok".into()),
                ("unlink".into(), "missing".into(), "ENOENT".into()),
                ("setxattr".into(), "b.txt".into(), "ok".into()),
                ("unlink".into(), "b.txt".into(), "ok".into()),
            ]
        );
        assert_eq!(recs[2]["to"], "b.txt");
        assert_eq!(recs[1]["mode"], "0640");
        assert!(recs[0]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(recs[0]["uid"], 0);
        // Reads are not audited.
        let _ = f.fs.lookup(&ctx, ROOT_ID, &c("sub")).unwrap();
        assert_eq!(f.audit().len(), recs.len());
    }

    #[test]
    fn device_nodes_cannot_be_created_but_fifos_can() {
        let f = fixture(false, &[]);
        let ctx = root();
        let dev = libc::makedev(1, 3) as u32; // /dev/null's numbers
        assert_eq!(
            errno(f.fs.mknod(&ctx, ROOT_ID, &c("null"), libc::S_IFCHR | 0o666, dev, 0)),
            libc::EPERM
        );
        assert_eq!(
            errno(f.fs.mknod(&ctx, ROOT_ID, &c("blk"), libc::S_IFBLK | 0o666, dev, 0)),
            libc::EPERM
        );
        assert!(!f.share().join("null").exists());
        f.fs.mknod(&ctx, ROOT_ID, &c("fifo"), libc::S_IFIFO | 0o644, 0, 0)
            .unwrap();
        assert!(f.share().join("fifo").exists());
    }

    #[test]
    fn allowed_device_nodes_are_made_but_never_opened() {
        let Fixture {
            dir,
            fs,
            audit_path: _,
        } = fixture(false, &[]);
        let fs = fs.allow_device_nodes(true);
        let share = dir.path().join("share");
        let ctx = root();
        let null = libc::makedev(1, 3);
        let made = fs.mknod(
            &ctx,
            ROOT_ID,
            &c("null"),
            libc::S_IFCHR | 0o666,
            null as u32,
            0,
        );
        if !airlock_common::sandbox::is_root() {
            // Without CAP_MKNOD the host refuses, whatever the policy.
            assert_eq!(errno(made), libc::EPERM);
            return;
        }
        let entry = made.unwrap();
        assert_eq!(entry.attr.st_mode & libc::S_IFMT, libc::S_IFCHR);
        assert_eq!(entry.attr.st_rdev, null);
        let meta = std::fs::symlink_metadata(share.join("null")).unwrap();
        assert_eq!(meta.rdev(), null);
        fs.mknod(
            &ctx,
            ROOT_ID,
            &c("blk"),
            libc::S_IFBLK | 0o600,
            null as u32,
            0,
        )
        .unwrap();
        // Made, but never opened on the host: the guest's open of a device
        // node is served by its own kernel.
        assert!(fs.open(&ctx, entry.inode, libc::O_RDWR as u32, 0).is_err());
    }

    #[test]
    fn special_files_and_symlinks_are_never_opened_on_the_host() {
        let f = fixture(false, &[]);
        let ctx = root();
        // A symlink the guest made, pointing out of the share.
        std::os::unix::fs::symlink("/etc/passwd", f.share().join("escape")).unwrap();
        let link = f.fs.lookup(&ctx, ROOT_ID, &c("escape")).unwrap();
        assert_eq!(link.attr.st_mode & libc::S_IFMT, libc::S_IFLNK);
        assert!(f
            .fs
            .open(&ctx, link.inode, libc::O_RDONLY as u32, 0)
            .is_err());
        assert_eq!(f.fs.readlink(&ctx, link.inode).unwrap(), b"/etc/passwd");
        // O_CREAT on the symlink's name must not create or truncate its target.
        assert!(f
            .fs
            .create(&ctx, ROOT_ID, &c("escape"), create_args(0o644))
            .is_err());
        // A device node placed in the share by the host is not opened either.
        let path = c(f.share().join("hostnull").to_str().unwrap());
        // SAFETY: mknod with a valid NUL-terminated path; the result is checked.
        let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(rc, 0);
        let node = f.fs.lookup(&ctx, ROOT_ID, &c("hostnull")).unwrap();
        assert!(f.fs.open(&ctx, node.inode, libc::O_RDWR as u32, 0).is_err());
        // `..` at the root stays at the root; names with '/' are refused.
        let up = f.fs.lookup(&ctx, ROOT_ID, &c("..")).unwrap();
        let root_attr = f.fs.getattr(&ctx, ROOT_ID, None).unwrap().0;
        assert_eq!(up.attr.st_ino, root_attr.st_ino);
        assert_eq!(
            errno(f.fs.lookup(&ctx, ROOT_ID, &c("../etc"))),
            libc::EINVAL
        );
    }

    #[test]
    fn ids_are_translated_both_ways_and_forbidden_ids_refused() {
        let f = fixture(false, &["map:0:1000:1", "forbid-guest:666:1"]);
        // Host uid 1000 creates in the share: it must be writable to it,
        // whatever the umask the share was made with.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f.share(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let ctx = root(); // guest root, host uid 1000
        let (e, _, _, _) =
            f.fs.create(&ctx, ROOT_ID, &c("mine"), create_args(0o644))
                .unwrap();
        let meta = std::fs::metadata(f.share().join("mine")).unwrap();
        assert_eq!(meta.uid(), 1000, "file is owned by the mapped host uid");
        assert_eq!(e.attr.st_uid, 0, "the guest sees its own uid");
        assert_eq!(f.fs.getattr(&ctx, e.inode, None).unwrap().0.st_uid, 0);
        // chown to a guest uid translates it too.
        // SAFETY: all-zero is a valid stat64.
        let mut attr: stat64 = unsafe { std::mem::zeroed() };
        attr.st_uid = 0;
        f.fs.setattr(&ctx, e.inode, attr, None, SetattrValid::UID)
            .unwrap();
        assert_eq!(
            std::fs::metadata(f.share().join("mine")).unwrap().uid(),
            1000
        );
        attr.st_uid = 666;
        assert_eq!(
            errno(f.fs.setattr(&ctx, e.inode, attr, None, SetattrValid::UID)),
            libc::EPERM
        );
        let mut forbidden = root();
        forbidden.uid = 666;
        assert_eq!(
            errno(f.fs.create(&forbidden, ROOT_ID, &c("nope"), create_args(0o644))),
            libc::EPERM
        );
        // A host file owned by an unmapped uid shows through unchanged.
        std::fs::write(f.share().join("other"), b"").unwrap();
        std::os::unix::fs::chown(f.share().join("other"), Some(4242), None).unwrap();
        assert_eq!(
            f.fs.lookup(&ctx, ROOT_ID, &c("other")).unwrap().attr.st_uid,
            4242
        );
    }

    /// READ and WRITE on a directory handle are refused and leave it
    /// usable: fuse-backend-rs applied the request's flags with F_SETFL,
    /// which a directory refuses for O_DIRECT, and closed the handle's fd
    /// on that error (found by the fuse fuzz target; without the fix the
    /// readdir below fails with EBADF, or the process aborts when the fd
    /// is closed a second time).
    #[test]
    fn io_on_a_directory_handle_leaves_the_handle_intact() {
        struct NoData;
        impl io::Read for NoData {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Ok(0)
            }
        }
        impl ZeroCopyReader for NoData {
            fn read_to(
                &mut self,
                _: &mut dyn fuse_backend_rs::file_traits::FileReadWriteVolatile,
                _: usize,
                _: u64,
            ) -> io::Result<usize> {
                Ok(0)
            }
        }
        let f = fixture(false, &[]);
        std::fs::write(f.share().join("a"), b"").unwrap();
        let ctx = root();
        let dir =
            f.fs.opendir(&ctx, ROOT_ID, libc::O_RDONLY as u32)
                .unwrap()
                .0
                .unwrap();
        let direct = (libc::O_RDONLY | libc::O_DIRECT) as u32;
        let written = f.fs.write(
            &ctx,
            ROOT_ID,
            dir,
            &mut NoData,
            1,
            0,
            None,
            false,
            direct,
            0,
        );
        assert_eq!(errno(written), libc::EBADF);
        let mut entries = 0;
        f.fs.readdir(&ctx, ROOT_ID, dir, 4096, 0, &mut |_| {
            entries += 1;
            Ok(1)
        })
        .unwrap();
        assert_eq!(entries, 1, "readdir through the handle");
        f.fs.releasedir(&ctx, ROOT_ID, 0, dir).unwrap();
    }

    /// Caps this process's address space at `extra` bytes beyond what it
    /// maps now, so an allocation larger than that aborts it.
    fn cap_address_space(extra: u64) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let limit = libc::rlimit {
            rlim_cur: vm_kib * 1024 + extra,
            rlim_max: vm_kib * 1024 + extra,
        };
        // SAFETY: setrlimit reads the rlimit passed by reference, which
        // outlives the call.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
    }

    /// A guest's GETXATTR/LISTXATTR size of 4 GiB must not become a 4 GiB
    /// buffer (found by the fuse fuzz target). Run in a child process whose
    /// address space is capped 1 GiB above what it uses, where such a
    /// buffer aborts the process.
    #[test]
    fn xattr_sizes_from_the_guest_do_not_become_huge_buffers() {
        const CHILD: &str = "AIRLOCK_TEST_XATTR_CHILD";
        const NAME: &str =
            "filesystem::tests::xattr_sizes_from_the_guest_do_not_become_huge_buffers";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--test-threads=1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let f = fixture(false, &[]);
        let ctx = root();
        let e =
            f.fs.create(&ctx, ROOT_ID, &c("x"), create_args(0o644))
                .unwrap()
                .0;
        cap_address_space(1 << 30);
        // Whatever the share's file system says about xattrs, the call
        // comes back.
        let got = f.fs.getxattr(&ctx, e.inode, &c("user.none"), u32::MAX);
        assert!(got.is_err(), "an xattr that does not exist");
        let listed = f.fs.listxattr(&ctx, e.inode, u32::MAX);
        assert!(
            matches!(listed, Ok(ListxattrReply::Names(_))) || listed.is_err(),
            "listxattr with a size asks for names"
        );
    }

    #[test]
    fn escape_bytes_keeps_utf8_and_hex_escapes_the_rest() {
        assert_eq!(escape_bytes("dir/ü.txt".as_bytes()), "dir/ü.txt");
        assert_eq!(escape_bytes(b"a\xffb\xc3"), "a\\xffb\\xc3");
    }
}

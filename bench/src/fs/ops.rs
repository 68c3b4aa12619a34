//! The file-system operations, each a guest shell fragment run on one
//! peer's directory `$D` (`/mnt/<peer>/bench`), with what it reports.

/// Sizes of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Sequential write / cold read size in MiB.
    pub seq_mib: u32,
    /// Bytes fio moves in each random 4 KiB test, in MiB.
    pub random_io_mib: u32,
    /// Number of small files.
    pub files: u32,
}

impl Sizes {
    /// The full run.
    pub const FULL: Sizes = Sizes {
        seq_mib: 128,
        random_io_mib: 16,
        files: 1000,
    };
    /// `--quick`.
    pub const QUICK: Sizes = Sizes {
        seq_mib: 32,
        random_io_mib: 2,
        files: 200,
    };
}

/// What an operation's number means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// MiB/s over the timed interval.
    Throughput,
    /// fio's IOPS.
    Iops,
    /// Seconds (lower is better).
    Seconds,
}

impl Metric {
    /// Unit for the tables.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Throughput => "MiB/s",
            Metric::Iops => "IOPS",
            Metric::Seconds => "s",
        }
    }

    /// Whether larger is better.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::Seconds)
    }
}

/// One operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `dd` of zeros, 1 MiB blocks, `conv=fsync`.
    SeqWrite,
    /// `dd` to /dev/null after dropping guest and host caches.
    SeqRead,
    /// fio 4 KiB random reads, O_DIRECT, psync, queue depth 1.
    RandRead,
    /// fio 4 KiB random writes, O_DIRECT, psync, queue depth 1.
    RandWrite,
    /// `echo x > f$i` for every small file (shell built-ins only).
    Create,
    /// One `stat` of all the small files, right after they were created.
    Stat,
    /// `ls -l` of the small files' directory after dropping caches.
    ListCold,
    /// `rm -rf` of the small files.
    RemoveFiles,
    /// `tar -xf` of the source tree (from guest tmpfs) into the share.
    Untar,
    /// `find` over the unpacked tree after dropping caches.
    Find,
    /// `rm -rf` of the unpacked tree.
    RemoveTree,
}

/// Every operation of the full run, in order (later ones use files earlier
/// ones made).
pub const ALL: [Op; 11] = [
    Op::SeqWrite,
    Op::SeqRead,
    Op::RandRead,
    Op::RandWrite,
    Op::Create,
    Op::Stat,
    Op::ListCold,
    Op::RemoveFiles,
    Op::Untar,
    Op::Find,
    Op::RemoveTree,
];

/// The issue-2 subset.
pub const QUICK: [Op; 5] = [
    Op::SeqWrite,
    Op::SeqRead,
    Op::Create,
    Op::ListCold,
    Op::RemoveFiles,
];

impl Op {
    /// Short name used on the guest command line.
    pub fn id(self) -> &'static str {
        match self {
            Op::SeqWrite => "seqwrite",
            Op::SeqRead => "seqread",
            Op::RandRead => "randread",
            Op::RandWrite => "randwrite",
            Op::Create => "create",
            Op::Stat => "stat",
            Op::ListCold => "lscold",
            Op::RemoveFiles => "rmfiles",
            Op::Untar => "untar",
            Op::Find => "find",
            Op::RemoveTree => "rmtree",
        }
    }

    /// Row name in the tables.
    pub fn label(self, sizes: &Sizes) -> String {
        let Sizes {
            seq_mib,
            random_io_mib,
            files,
        } = *sizes;
        match self {
            Op::SeqWrite => format!("write {seq_mib} MiB + fsync"),
            Op::SeqRead => format!("cold read {seq_mib} MiB"),
            Op::RandRead => format!("4 KiB random read ({random_io_mib} MiB, O_DIRECT)"),
            Op::RandWrite => format!("4 KiB random write ({random_io_mib} MiB, O_DIRECT)"),
            Op::Create => format!("create {files} small files"),
            Op::Stat => format!("stat {files} files"),
            Op::ListCold => format!("ls -l {files} files, cold"),
            Op::RemoveFiles => format!("rm -rf {files} files"),
            Op::Untar => "untar source tree".to_string(),
            Op::Find => "find source tree, cold".to_string(),
            Op::RemoveTree => "rm -rf source tree".to_string(),
        }
    }

    /// What the number means.
    pub fn metric(self) -> Metric {
        match self {
            Op::SeqWrite | Op::SeqRead => Metric::Throughput,
            Op::RandRead | Op::RandWrite => Metric::Iops,
            _ => Metric::Seconds,
        }
    }

    /// Whether the host's caches are dropped before it (the guest drops its
    /// own before every operation but the warm `stat`).
    pub fn cold_host(self) -> bool {
        matches!(
            self,
            Op::SeqRead | Op::RandRead | Op::RandWrite | Op::ListCold | Op::Find
        )
    }

    /// Payload bytes moved, for CPU per GiB.
    pub fn bytes(self, sizes: &Sizes) -> Option<u64> {
        match self {
            Op::SeqWrite | Op::SeqRead => Some(u64::from(sizes.seq_mib) << 20),
            Op::RandRead | Op::RandWrite => Some(u64::from(sizes.random_io_mib) << 20),
            _ => None,
        }
    }
}

/// The guest shell functions: `prep_<id>` (untimed) and `op_<id>` (timed)
/// for every operation, using `$D` (the peer's directory), `$SEQ_MIB`,
/// `$RAND_MIB` and `$FILES`.
pub const SHELL_FUNCTIONS: &str = r#"
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
fio_run() {
    fio --name=bench --filename="$D/big" --rw="$1" --bs=4k --direct=1 \
        --ioengine=psync --iodepth=1 --size="${SEQ_MIB}M" --io_size="${RAND_MIB}M" \
        --randrepeat=1 --norandommap --output-format=json --output=/tmp/fio.json
}
prep_seqwrite() { rm -f "$D/big"; drop_caches; }
op_seqwrite() { dd if=/dev/zero of="$D/big" bs=1M count="$SEQ_MIB" conv=fsync 2>/dev/null; }
prep_seqread() { drop_caches; }
op_seqread() { dd if="$D/big" of=/dev/null bs=1M 2>/dev/null; }
prep_randread() { drop_caches; }
op_randread() { fio_run randread; }
prep_randwrite() { drop_caches; }
op_randwrite() { fio_run randwrite; }
prep_create() { rm -rf "$D/many"; mkdir -p "$D/many"; drop_caches; }
op_create() {
    i=0
    while [ $i -lt "$FILES" ]; do
        echo x > "$D/many/f$i" || return 1
        i=$((i + 1))
    done
}
prep_stat() { :; }
op_stat() { stat -c %s "$D"/many/* > /dev/null; }
prep_lscold() { drop_caches; }
op_lscold() { ls -l "$D/many" > /dev/null; }
prep_rmfiles() { drop_caches; }
op_rmfiles() { rm -rf "$D/many"; }
prep_untar() { rm -rf "$D/tree"; mkdir -p "$D/tree"; drop_caches; }
op_untar() { tar -xf /tmp/tree.tar -C "$D/tree"; }
prep_find() { drop_caches; }
op_find() { find "$D/tree" > /dev/null; }
prep_rmtree() { drop_caches; }
op_rmtree() { rm -rf "$D/tree"; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_shell_functions() {
        for op in ALL {
            assert!(SHELL_FUNCTIONS.contains(&format!("prep_{}()", op.id())));
            assert!(SHELL_FUNCTIONS.contains(&format!("op_{}()", op.id())));
        }
    }

    #[test]
    fn quick_is_a_subset_in_order() {
        let positions: Vec<usize> = QUICK
            .iter()
            .map(|q| ALL.iter().position(|a| a == q).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
    }
}

//! `notify_channel`: what a guest sends on airlock-fs' notify port
//! (`--notify-socket`, the virtio-serial port org.airlock.notify) into the
//! connection's protocol state, the way the watcher thread feeds it: the
//! input in chunks sized by its first byte, each followed by as many events
//! as the channel takes and a full write. Beyond "does not panic": never
//! more than [`WINDOW`] events unacknowledged, whatever the guest says.

use airlock_fs::notify::channel::{Channel, WINDOW};
use airlock_notify::Flags;

/// The target's body.
pub fn fuzz_notify_channel(data: &[u8]) {
    let chunk = 1 + usize::from(data.first().copied().unwrap_or(0) % 64);
    let mut channel = Channel::new();
    for piece in data.chunks(chunk) {
        channel.receive(piece);
        while channel.can_send() {
            channel.send(Flags::CHANGED, b"dir/file");
        }
        assert!(channel.in_flight() <= WINDOW);
        let written = channel.output().len();
        channel.wrote(written);
    }
}

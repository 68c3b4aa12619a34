//! `fs_chain`: the virtio-fs device's descriptor-chain handling — taking
//! chains off the high-priority and request queues, building the FUSE
//! `Reader` and `VirtioFsWriter` over them, returning them on the used ring
//! — through [`FsSession`]'s event handler, with the guest's queues (sizes,
//! descriptor tables, buffer contents) from the input: malformed chains,
//! loops, out-of-range and unmapped addresses, zero lengths and indirect
//! tables. Whatever the buffers hold is served as a FUSE request against
//! the real share.
//!
//! After every event: the handler succeeded (an error would stop the
//! worker) and the device published at most a ring's worth of chains (see
//! `GuestQueues::check_device_used`: buffers may lie on the rings).
//!
//! [`FsSession`]: airlock_fs::device::FsSession

use airlock_testkit::queues::GuestQueues;
use airlock_testkit::Input;
use vhost_user_backend::VhostUserBackend;
use vmm_sys_util::epoll::EventSet;

use super::{fresh_share, session};
use airlock_fs::device::{HIPRIO_QUEUE_EVENT, REQUEST_QUEUE_EVENT};

const MAX_STEPS: usize = 64;

pub fn fuzz_fs_chain(data: &[u8]) {
    let (_guard, dir) = fresh_share();
    let mut input = Input::new(data);
    let variant = input.u8();
    let event_idx = input.bool();
    let session = session(dir, variant);
    let mut queues = GuestQueues::from_input(2, &mut input);
    queues.set_event_idx(event_idx);
    session.set_event_idx(event_idx);
    session
        .update_memory(queues.mem.clone())
        .expect("cannot hand guest memory to the session");

    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        let event = match input.u8() % 4 {
            0 => HIPRIO_QUEUE_EVENT,
            1 => REQUEST_QUEUE_EVENT,
            _ => {
                queues.guest_turn(&mut input);
                continue;
            }
        };
        let q = usize::from(event);
        let before = queues.device_used_idx(q);
        if let Err(e) = session.handle_event(event, EventSet::IN, &queues.vrings, 0) {
            panic!("queue event {event} stopped the device: {e}");
        }
        queues.check_device_used(q, before);
    }
}

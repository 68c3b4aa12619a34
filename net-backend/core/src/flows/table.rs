//! The flow table: generation-checked slots (so an event or timer for a
//! closed flow never reaches the slot's next tenant), one map from every
//! kind's keys to slots, the `--max-flows` limit, and each flow's wake-up
//! time in the poller.

use std::collections::HashMap;
use std::time::Instant;

use super::{Flow, FlowKey};
use crate::poller::{self, FlowId, Poller};

struct Slot {
    generation: u32,
    flow: Option<Box<dyn Flow>>,
    /// The earliest wake-up queued in the poller for this tenant.
    wake: Option<Instant>,
}

pub(crate) struct FlowTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    max: usize,
    index: HashMap<FlowKey, FlowId>,
}

impl FlowTable {
    pub(crate) fn new(max: usize) -> FlowTable {
        FlowTable {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            max,
            index: HashMap::new(),
        }
    }

    /// Flows in the table.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// The most flows the table takes.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// A slot for a new flow, or `None` at the limit. Give it back with
    /// [`FlowTable::release`] if the flow cannot be opened after all.
    pub(crate) fn reserve(&mut self) -> Option<FlowId> {
        if self.live >= self.max {
            return None;
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                if self.slots.len() >= poller::MAX_SLOTS {
                    return None;
                }
                self.slots.push(Slot {
                    generation: 0,
                    flow: None,
                    wake: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        Some(FlowId {
            slot,
            generation: self.slots[slot as usize].generation,
        })
    }

    /// Returns a reserved slot that was not filled.
    pub(crate) fn release(&mut self, id: FlowId) {
        if self
            .slots
            .get(id.slot as usize)
            .is_some_and(|s| s.generation == id.generation && s.flow.is_none())
        {
            self.free.push(id.slot);
        }
    }

    /// Puts `flow` into the slot reserved as `id` and indexes its keys.
    pub(crate) fn insert(&mut self, id: FlowId, flow: Box<dyn Flow>) {
        let Some(s) = self.slots.get_mut(id.slot as usize) else {
            return;
        };
        if s.generation != id.generation || s.flow.is_some() {
            return;
        }
        for key in flow.keys() {
            self.index.insert(key, id);
        }
        s.flow = Some(flow);
        s.wake = None;
        self.live += 1;
    }

    pub(crate) fn lookup(&self, key: &FlowKey) -> Option<FlowId> {
        self.index.get(key).copied()
    }

    pub(crate) fn contains(&self, key: &FlowKey) -> bool {
        self.index.contains_key(key)
    }

    pub(crate) fn get_mut(&mut self, id: FlowId) -> Option<&mut (dyn Flow + 'static)> {
        let s = self.slots.get_mut(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.flow.as_deref_mut()
    }

    /// Takes flow `id` out: its keys are forgotten and its slot's next
    /// tenant gets a new generation.
    pub(crate) fn remove(&mut self, id: FlowId) -> Option<Box<dyn Flow>> {
        let s = self.slots.get_mut(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        let flow = s.flow.take()?;
        s.generation = s.generation.wrapping_add(1);
        s.wake = None;
        self.free.push(id.slot);
        self.live -= 1;
        for key in flow.keys() {
            if self.index.get(&key) == Some(&id) {
                self.index.remove(&key);
            }
        }
        Some(flow)
    }

    /// Every live flow's id.
    pub(crate) fn ids(&self) -> Vec<FlowId> {
        self.iter().map(|(id, _)| id).collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (FlowId, &dyn Flow)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let flow = s.flow.as_deref()?;
            Some((
                FlowId {
                    slot: i as u32,
                    generation: s.generation,
                },
                flow,
            ))
        })
    }

    /// Queues a wake-up for the flow's deadline unless an earlier one is
    /// queued already (an early wake-up finds the deadline moved and
    /// queues again).
    pub(crate) fn schedule(&mut self, id: FlowId, poller: &mut Poller) {
        let Some(s) = self.slots.get_mut(id.slot as usize) else {
            return;
        };
        if s.generation != id.generation {
            return;
        }
        let Some(deadline) = s.flow.as_ref().and_then(|f| f.deadline()) else {
            return;
        };
        if s.wake.is_none_or(|w| deadline < w) {
            poller.schedule(deadline, id);
            s.wake = Some(deadline);
        }
    }

    /// A wake-up for `id` came due at `now`: whether its flow's deadline
    /// has passed (and its timer should run).
    pub(crate) fn woken(&mut self, id: FlowId, now: Instant) -> bool {
        let Some(s) = self.slots.get_mut(id.slot as usize) else {
            return false;
        };
        if s.generation != id.generation {
            return false;
        }
        if s.wake.is_some_and(|w| w <= now) {
            s.wake = None;
        }
        s.flow
            .as_ref()
            .and_then(|f| f.deadline())
            .is_some_and(|d| d <= now)
    }

    /// Whether a queued wake-up for `id` still concerns a live flow.
    pub(crate) fn is_live(&self, id: FlowId) -> bool {
        self.slots
            .get(id.slot as usize)
            .is_some_and(|s| s.generation == id.generation && s.flow.is_some())
    }
}

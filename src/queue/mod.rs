//! The admission queue of SPEC §4: priority classes (manual > scheduled > backfill), `priority`
//! within a class, then older logical date, then FIFO; aging lifts a waiting entry one class
//! per period; per-key limits without head-of-line blocking.
//!
//! Entries that share the same set of limit keys (for a run: its DAG, and its Backfill if any)
//! form a group. Only group heads compete for admission. When a head is blocked by one of its
//! keys, the whole group is parked until the next pass, so one full DAG never blocks another
//! and a pass costs O(groups · log n), not O(entries). Pure: the caller passes the time.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

/// Priority classes, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RunClass {
    Backfill = 0,
    Scheduled = 1,
    Manual = 2,
}

impl RunClass {
    const TOP: u8 = RunClass::Manual as u8;

    pub fn as_str(self) -> &'static str {
        match self {
            RunClass::Backfill => "backfill",
            RunClass::Scheduled => "scheduled",
            RunClass::Manual => "manual",
        }
    }

    fn from_rank(rank: u8) -> Self {
        match rank {
            0 => RunClass::Backfill,
            1 => RunClass::Scheduled,
            _ => RunClass::Manual,
        }
    }
}

/// Something waiting for admission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<K, T> {
    pub payload: T,
    pub class: RunClass,
    /// higher first, within a class
    pub priority: i32,
    /// older first, within a class and priority (any monotonic unit, e.g. Unix seconds)
    pub logical_date: i64,
    /// the limits this entry must fit under (besides any global one the caller checks)
    pub keys: Vec<K>,
}

pub type EntryId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Order {
    class: Reverse<u8>,
    priority: Reverse<i32>,
    logical_date: i64,
    seq: EntryId,
}

struct Slot<K, T> {
    entry: Entry<K, T>,
    group: usize,
    /// current class after aging
    rank: u8,
    enqueued_at: i64,
}

impl<K, T> Slot<K, T> {
    fn order(&self, seq: EntryId) -> Order {
        Order {
            class: Reverse(self.rank),
            priority: Reverse(self.entry.priority),
            logical_date: self.entry.logical_date,
            seq,
        }
    }
}

struct Group<K> {
    keys: Vec<K>,
    members: BTreeSet<Order>,
    parked: bool,
}

/// The priority queue with aging and per-key limits.
pub struct AdmissionQueue<K, T> {
    aging_ms: i64,
    next_seq: EntryId,
    slots: HashMap<EntryId, Slot<K, T>>,
    groups: Vec<Group<K>>,
    group_of_keys: HashMap<Vec<K>, usize>,
    /// heads of unparked, non-empty groups
    heads: BTreeSet<(Order, usize)>,
    /// (time of next promotion, entry)
    promotions: BTreeSet<(i64, EntryId)>,
}

impl<K: Clone + Eq + Hash + Ord, T> AdmissionQueue<K, T> {
    /// `aging_ms`: how long an entry waits before it moves up one class (≤ 0 disables aging).
    pub fn new(aging_ms: i64) -> Self {
        AdmissionQueue {
            aging_ms,
            next_seq: 0,
            slots: HashMap::new(),
            groups: Vec::new(),
            group_of_keys: HashMap::new(),
            heads: BTreeSet::new(),
            promotions: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Queue depth by current (aged) class: [backfill, scheduled, manual].
    pub fn depth_by_class(&self) -> [usize; 3] {
        let mut depth = [0; 3];
        for slot in self.slots.values() {
            depth[slot.rank as usize] += 1;
        }
        depth
    }

    /// Adds an entry at time `now_ms`.
    pub fn push(&mut self, mut entry: Entry<K, T>, now_ms: i64) -> EntryId {
        entry.keys.sort();
        entry.keys.dedup();
        let group = match self.group_of_keys.get(&entry.keys) {
            Some(&g) => g,
            None => {
                self.groups.push(Group {
                    keys: entry.keys.clone(),
                    members: BTreeSet::new(),
                    parked: false,
                });
                let g = self.groups.len() - 1;
                self.group_of_keys.insert(entry.keys.clone(), g);
                g
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let rank = entry.class as u8;
        let slot = Slot {
            entry,
            group,
            rank,
            enqueued_at: now_ms,
        };
        if self.aging_ms > 0 && rank < RunClass::TOP {
            self.promotions.insert((now_ms + self.aging_ms, seq));
        }
        let order = slot.order(seq);
        self.slots.insert(seq, slot);
        self.insert_member(group, order);
        seq
    }

    /// Removes an entry (a cancelled or deleted run).
    pub fn remove(&mut self, id: EntryId) -> Option<Entry<K, T>> {
        let slot = self.slots.remove(&id)?;
        let order = slot.order(id);
        self.remove_member(slot.group, order);
        if slot.rank < RunClass::TOP && self.aging_ms > 0 {
            let step = i64::from(slot.rank - slot.entry.class as u8) + 1;
            self.promotions
                .remove(&(slot.enqueued_at + step * self.aging_ms, id));
        }
        Some(slot.entry)
    }

    /// Iterates over waiting entries in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (EntryId, &Entry<K, T>)> {
        self.slots.iter().map(|(id, s)| (*id, &s.entry))
    }

    /// The current class of an entry, after aging.
    pub fn current_class(&self, id: EntryId) -> Option<RunClass> {
        self.slots.get(&id).map(|s| RunClass::from_rank(s.rank))
    }

    /// Starts an admission pass: groups parked by the previous pass compete again.
    pub fn begin_pass(&mut self) {
        for g in 0..self.groups.len() {
            if self.groups[g].parked {
                self.groups[g].parked = false;
                if let Some(head) = self.groups[g].members.first() {
                    self.heads.insert((*head, g));
                }
            }
        }
    }

    /// The best entry whose keys all have room, removed from the queue. `is_full(key)` tells
    /// whether a key is at its limit; a group blocked by a full key is parked until
    /// [`begin_pass`](Self::begin_pass).
    pub fn pop(
        &mut self,
        now_ms: i64,
        mut is_full: impl FnMut(&K) -> bool,
    ) -> Option<(EntryId, Entry<K, T>)> {
        self.age(now_ms);
        while let Some(&(order, g)) = self.heads.first() {
            if self.groups[g].keys.iter().any(&mut is_full) {
                self.heads.remove(&(order, g));
                self.groups[g].parked = true;
                continue;
            }
            let entry = self.remove(order.seq)?;
            return Some((order.seq, entry));
        }
        None
    }

    /// The entry `pop` would consider first, without removing it (ignores limits).
    pub fn peek(&mut self, now_ms: i64) -> Option<(EntryId, &Entry<K, T>)> {
        self.age(now_ms);
        let (order, _) = self.heads.first()?;
        self.slots.get(&order.seq).map(|s| (order.seq, &s.entry))
    }

    /// Applies due promotions.
    fn age(&mut self, now_ms: i64) {
        while let Some(&(at, id)) = self.promotions.first() {
            if at > now_ms {
                break;
            }
            self.promotions.remove(&(at, id));
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            let old = slot.order(id);
            slot.rank += 1;
            let new = slot.order(id);
            let group = slot.group;
            if slot.rank < RunClass::TOP {
                self.promotions.insert((at + self.aging_ms, id));
            }
            self.remove_member(group, old);
            self.insert_member(group, new);
        }
    }

    fn insert_member(&mut self, g: usize, order: Order) {
        let group = &mut self.groups[g];
        let old_head = group.members.first().copied();
        group.members.insert(order);
        if !group.parked && old_head.is_none_or(|h| order < h) {
            if let Some(h) = old_head {
                self.heads.remove(&(h, g));
            }
            self.heads.insert((order, g));
        }
    }

    fn remove_member(&mut self, g: usize, order: Order) {
        let group = &mut self.groups[g];
        let was_head = group.members.first() == Some(&order);
        group.members.remove(&order);
        if was_head && !group.parked {
            self.heads.remove(&(order, g));
            if let Some(h) = group.members.first() {
                self.heads.insert((*h, g));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(
        name: &'static str,
        class: RunClass,
        priority: i32,
        date: i64,
        keys: &[&'static str],
    ) -> Entry<&'static str, &'static str> {
        Entry {
            payload: name,
            class,
            priority,
            logical_date: date,
            keys: keys.to_vec(),
        }
    }

    fn drain(q: &mut AdmissionQueue<&'static str, &'static str>, now: i64) -> Vec<&'static str> {
        q.begin_pass();
        std::iter::from_fn(|| q.pop(now, |_| false).map(|(_, e)| e.payload)).collect()
    }

    #[test]
    fn classes_then_priority_then_date_then_fifo() {
        let mut q = AdmissionQueue::new(0);
        q.push(entry("bf", RunClass::Backfill, 9, 1, &["a"]), 0);
        q.push(entry("s-late", RunClass::Scheduled, 0, 20, &["a"]), 0);
        q.push(entry("s-early", RunClass::Scheduled, 0, 10, &["b"]), 0);
        q.push(entry("s-prio", RunClass::Scheduled, 5, 30, &["c"]), 0);
        q.push(entry("m", RunClass::Manual, 0, 99, &["a"]), 0);
        q.push(entry("fifo-1", RunClass::Scheduled, 0, 20, &["d"]), 0);
        q.push(entry("fifo-2", RunClass::Scheduled, 0, 20, &["d"]), 0);
        assert_eq!(
            drain(&mut q, 0),
            ["m", "s-prio", "s-early", "s-late", "fifo-1", "fifo-2", "bf"]
        );
    }

    #[test]
    fn a_key_at_its_limit_never_blocks_other_keys() {
        let mut q = AdmissionQueue::new(0);
        for d in 0..100 {
            q.push(entry("full", RunClass::Manual, 10, d, &["dag-a"]), 0);
        }
        q.push(entry("other", RunClass::Backfill, 0, 500, &["dag-b"]), 0);
        q.begin_pass();
        let got = q.pop(0, |k| *k == "dag-a").map(|(_, e)| e.payload);
        assert_eq!(got, Some("other"));
        // still blocked in this pass; nothing else is admissible
        assert!(q.pop(0, |k| *k == "dag-a").is_none());
        // room again in the next pass
        q.begin_pass();
        assert_eq!(q.pop(0, |_| false).map(|(_, e)| e.payload), Some("full"));
    }

    #[test]
    fn a_backfill_key_blocks_only_its_own_runs() {
        let mut q = AdmissionQueue::new(0);
        q.push(entry("bf", RunClass::Backfill, 0, 1, &["dag", "bf-1"]), 0);
        q.push(entry("sched", RunClass::Scheduled, 0, 2, &["dag"]), 0);
        q.begin_pass();
        let admitted: Vec<_> =
            std::iter::from_fn(|| q.pop(0, |k| *k == "bf-1").map(|(_, e)| e.payload)).collect();
        assert_eq!(admitted, ["sched"]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn aging_lifts_a_waiting_backfill_above_newer_scheduled_runs() {
        let aging = 5 * 60_000;
        let mut q = AdmissionQueue::new(aging);
        q.push(entry("backfill", RunClass::Backfill, 0, 1, &["a"]), 0);
        q.push(
            entry("sched-new", RunClass::Scheduled, 0, 1000, &["b"]),
            aging - 1,
        );
        assert_eq!(q.peek(aging - 1).map(|(_, e)| e.payload), Some("sched-new"));
        // after one period the backfill run is in the scheduled class, with the older date
        assert_eq!(q.peek(aging).map(|(_, e)| e.payload), Some("backfill"));
        assert_eq!(q.depth_by_class(), [0, 2, 0]);
        // after two periods it outranks fresh scheduled runs, even higher-priority ones
        // (sched-new has waited one period by then and is promoted as well)
        q.push(
            entry("sched-prio", RunClass::Scheduled, 100, 1, &["c"]),
            2 * aging,
        );
        let id = q.peek(2 * aging).map(|(id, _)| id).unwrap();
        assert_eq!(q.current_class(id), Some(RunClass::Manual));
        assert_eq!(
            drain(&mut q, 2 * aging),
            ["backfill", "sched-new", "sched-prio"]
        );
    }

    #[test]
    fn remove_takes_an_entry_out() {
        let mut q = AdmissionQueue::new(1000);
        let a = q.push(entry("a", RunClass::Scheduled, 0, 1, &["x"]), 0);
        q.push(entry("b", RunClass::Scheduled, 0, 2, &["x"]), 0);
        assert_eq!(q.remove(a).map(|e| e.payload), Some("a"));
        assert_eq!(drain(&mut q, 10_000), ["b"]);
        assert!(q.is_empty());
    }

    proptest! {
        /// Whatever the limits, a pass admits exactly the entries of unblocked keys, in the
        /// global order, and never one of a full key.
        #[test]
        fn pass_admits_everything_not_blocked_in_order(
            items in prop::collection::vec((0u8..3, -2i32..3, 0i64..50, 0usize..5), 0..80),
            full in prop::collection::vec(any::<bool>(), 5),
        ) {
            const KEYS: [&str; 5] = ["k0", "k1", "k2", "k3", "k4"];
            let mut q = AdmissionQueue::new(0);
            let mut expected = Vec::new();
            for (i, (class, prio, date, key)) in items.iter().enumerate() {
                let class = RunClass::from_rank(*class);
                q.push(Entry { payload: i, class, priority: *prio, logical_date: *date, keys: vec![KEYS[*key]] }, 0);
                if !full[*key] {
                    expected.push((Reverse(class), Reverse(*prio), *date, i));
                }
            }
            expected.sort();
            q.begin_pass();
            let is_full = |k: &&str| full[KEYS.iter().position(|x| x == k).unwrap()];
            let got: Vec<usize> = std::iter::from_fn(|| q.pop(0, is_full).map(|(_, e)| e.payload)).collect();
            prop_assert_eq!(got, expected.iter().map(|e| e.3).collect::<Vec<_>>());
        }
    }
}

//! Which objects of one kind exist, as a watch tells it: deletions, including those missed
//! while the watch was down or the operator was not running (found when the watch relists).
//! Shared by the DAG and Backfill controllers; pure (fed watch events, returns what changed).

use std::collections::HashMap;
use std::hash::Hash;

use kube::runtime::watcher::Event;

/// What a watch event means for the objects that exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<K: Eq + Hash> {
    /// the object `uid` is gone (deleted, or missing from a relist; its key may now name a
    /// newer object, which the relist lists)
    Gone { key: K, uid: String },
    /// every object that exists, after a (re)list
    Listed(HashMap<K, String>),
}

/// The objects known to exist, by key, with their uid.
#[derive(Debug)]
pub struct Relist<K> {
    known: HashMap<K, String>,
    relisted: HashMap<K, String>,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Relist {
            known: HashMap::new(),
            relisted: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> Relist<K> {
    /// Takes one watch event in (`identify` gives an object's key and uid, `None` for an
    /// object without them) and returns what changed.
    pub fn observe<T>(
        &mut self,
        event: &Event<T>,
        identify: impl Fn(&T) -> Option<(K, String)>,
    ) -> Vec<Change<K>> {
        match event {
            Event::Apply(obj) => {
                if let Some((key, uid)) = identify(obj) {
                    self.known.insert(key, uid);
                }
                Vec::new()
            }
            Event::InitApply(obj) => {
                if let Some((key, uid)) = identify(obj) {
                    self.relisted.insert(key, uid);
                }
                Vec::new()
            }
            Event::Delete(obj) => match identify(obj) {
                Some((key, uid)) => {
                    self.known.remove(&key);
                    vec![Change::Gone { key, uid }]
                }
                None => Vec::new(),
            },
            Event::Init => {
                self.relisted.clear();
                Vec::new()
            }
            Event::InitDone => {
                let mut changes: Vec<Change<K>> = self
                    .known
                    .iter()
                    .filter(|(key, uid)| self.relisted.get(*key) != Some(*uid))
                    .map(|(key, uid)| Change::Gone {
                        key: key.clone(),
                        uid: uid.clone(),
                    })
                    .collect();
                self.known = std::mem::take(&mut self.relisted);
                changes.push(Change::Listed(self.known.clone()));
                changes
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(obj: &(&'static str, &'static str)) -> Option<(String, String)> {
        Some((obj.0.to_string(), obj.1.to_string()))
    }

    fn listed(pairs: &[(&str, &str)]) -> Change<String> {
        Change::Listed(
            pairs
                .iter()
                .map(|(k, u)| (k.to_string(), u.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_deletion_missed_while_the_watch_was_down_is_found_by_the_relist() {
        let mut r = Relist::default();
        assert!(r.observe(&Event::Init, id).is_empty());
        r.observe(&Event::InitApply(("a", "1")), id);
        r.observe(&Event::InitApply(("b", "2")), id);
        assert_eq!(
            r.observe(&Event::InitDone, id),
            vec![listed(&[("a", "1"), ("b", "2")])]
        );
        r.observe(&Event::Apply(("c", "3")), id);
        // the watch restarts: b was deleted and a re-created meanwhile
        r.observe(&Event::Init, id);
        r.observe(&Event::InitApply(("a", "9")), id);
        r.observe(&Event::InitApply(("c", "3")), id);
        let mut changes = r.observe(&Event::InitDone, id);
        let last = changes.pop();
        changes.sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
        assert_eq!(
            changes,
            vec![
                Change::Gone {
                    key: "a".to_string(),
                    uid: "1".to_string()
                },
                Change::Gone {
                    key: "b".to_string(),
                    uid: "2".to_string()
                },
            ]
        );
        assert_eq!(last, Some(listed(&[("a", "9"), ("c", "3")])));
    }

    #[test]
    fn a_deletion_seen_is_told_once() {
        let mut r = Relist::default();
        r.observe(&Event::Init, id);
        r.observe(&Event::InitDone, id);
        r.observe(&Event::Apply(("a", "1")), id);
        assert_eq!(
            r.observe(&Event::Delete(("a", "1")), id),
            vec![Change::Gone {
                key: "a".to_string(),
                uid: "1".to_string()
            }]
        );
        r.observe(&Event::Init, id);
        assert_eq!(r.observe(&Event::InitDone, id), vec![listed(&[])]);
    }
}

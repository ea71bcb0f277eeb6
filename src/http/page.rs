//! Paging of DAG lists (issue 28, finding 2), shaped like Kubernetes' lists: `?limit=` DAGs
//! at most (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]), and when more follow, the
//! answer's `metadata.continue` is a token to send back as `?continue=` for the next page.
//! DAGs come in (namespace, name) order; the token names the last DAG given, so a page never
//! repeats or skips a DAG that existed through the walk (one created or deleted meanwhile
//! shows or not, as in Kubernetes). Pure: no I/O here.

use serde::Deserialize;

use crate::key::DagKey;

/// DAGs in a page when the request says no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Most DAGs in one page.
pub const MAX_LIMIT: usize = 500;

/// `?limit=&continue=` of a DAG list.
#[derive(Debug, Default, Deserialize)]
pub struct DagPageQuery {
    pub limit: Option<i64>,
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

/// A page asked for: at most `limit` DAGs after `after` (from the first when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagPage {
    pub limit: usize,
    pub after: Option<DagKey>,
}

impl DagPageQuery {
    /// The page asked for, or why the request is malformed.
    pub fn page(&self) -> Result<DagPage, String> {
        let limit = match self.limit {
            None => DEFAULT_LIMIT,
            Some(l) if (1..=MAX_LIMIT as i64).contains(&l) => l as usize,
            Some(l) => return Err(format!("limit {l} is not in 1..={MAX_LIMIT}")),
        };
        let after = match self.continue_token.as_deref().filter(|t| !t.is_empty()) {
            None => None,
            Some(token) => Some(decode(token).ok_or_else(|| {
                format!("continue token {token:?} is not one this API gave: start the list again")
            })?),
        };
        Ok(DagPage { limit, after })
    }
}

impl DagPage {
    /// Whether `key` comes after the page's start.
    pub fn admits(&self, key: &DagKey) -> bool {
        self.after.as_ref().is_none_or(|a| key > a)
    }

    /// Whether a namespace can hold DAGs of this page (those before the start's cannot).
    pub fn reaches(&self, namespace: &str) -> bool {
        self.after
            .as_ref()
            .is_none_or(|a| namespace >= a.namespace.as_str())
    }

    /// The page of `candidates` (in order, all after the start; one more than `limit` tells
    /// that more follow) and the token of the next page, if there is one.
    pub fn cut<T>(
        &self,
        mut candidates: Vec<T>,
        key: impl Fn(&T) -> &DagKey,
    ) -> (Vec<T>, Option<String>) {
        if candidates.len() <= self.limit {
            return (candidates, None);
        }
        candidates.truncate(self.limit);
        let token = candidates.last().map(|last| encode(key(last)));
        (candidates, token)
    }
}

/// The token naming `key`: hex of `namespace/name` (a namespace holds no `/`), URL-safe.
pub fn encode(key: &DagKey) -> String {
    format!("{}/{}", key.namespace, key.name)
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The key a token names, if it is one [`encode`] made.
pub fn decode(token: &str) -> Option<DagKey> {
    if token.len() % 2 != 0 || token.len() > 2 * 512 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let (namespace, name) = text.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/'))
        .then(|| DagKey::new(namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(limit: Option<i64>, token: Option<&str>) -> DagPageQuery {
        DagPageQuery {
            limit,
            continue_token: token.map(String::from),
        }
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let key = DagKey::new("team-a", "etl.daily");
        assert_eq!(decode(&encode(&key)), Some(key));
        for bad in ["", "zz", "abc", "2f61", "612f", "61", "ff2f61"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        let err = query(None, Some("nope")).page().expect_err("garbage");
        assert!(err.contains("continue token"), "{err}");
    }

    #[test]
    fn limits_default_and_are_bounded() {
        assert_eq!(query(None, None).page().map(|p| p.limit), Ok(DEFAULT_LIMIT));
        assert_eq!(query(Some(500), None).page().map(|p| p.limit), Ok(500));
        assert!(query(Some(0), None).page().is_err());
        assert!(query(Some(501), None).page().is_err());
        assert!(query(Some(-1), None).page().is_err());
    }

    #[test]
    fn a_cut_names_the_last_key_given_when_more_follow() {
        let keys: Vec<DagKey> = (0..5).map(|i| DagKey::new("a", format!("d{i}"))).collect();
        let page = DagPage {
            limit: 3,
            after: None,
        };
        let (first, token) = page.cut(keys.clone(), |k| k);
        assert_eq!(first, keys[..3].to_vec());
        let next = query(Some(3), token.as_deref()).page().expect("token");
        assert_eq!(next.after, Some(keys[2].clone()));
        let rest: Vec<DagKey> = keys.iter().filter(|k| next.admits(k)).cloned().collect();
        let (second, token) = next.cut(rest, |k| k);
        assert_eq!(second, keys[3..].to_vec());
        assert_eq!(token, None, "the last page has no token");
        assert!(next.reaches("a") && next.reaches("b") && !next.reaches("0"));
    }
}

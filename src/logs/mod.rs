//! Task logs (issue 16): read from the Pod while it exists, and — because Pods go (retention,
//! node loss) — the end of each try's log kept in PostgreSQL when the try ends.
//!
//! [`LogSource`] is where logs are read: the API server (`kubectl logs`' path, [`KubeLogs`])
//! in the operator, a table in tests. [`LogKeeper`] takes the tries the executor reports ended
//! and saves the last `--log-tail-bytes` of each (0: nothing is kept).

mod keeper;
mod kube;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use self::keeper::LogKeeper;
pub use self::kube::KubeLogs;
use crate::executor::PodKey;

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot read the log of Pod {pod}: {message}")]
    Source { pod: String, message: String },
}

/// A stream of log bytes.
pub type LogStream = BoxStream<'static, Result<Bytes, LogError>>;

/// Where Pod logs are read.
pub trait LogSource: Send + Sync + 'static {
    /// The log of `pod` (its one container), following it while it runs when `follow`;
    /// `None` when the Pod does not exist.
    fn stream<'a>(
        &'a self,
        pod: &'a PodKey,
        follow: bool,
    ) -> BoxFuture<'a, Result<Option<LogStream>, LogError>>;

    /// At most `max_bytes` of the end of `pod`'s log; `None` when the Pod does not exist.
    fn tail<'a>(
        &'a self,
        pod: &'a PodKey,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Option<LogTail>, LogError>>;
}

/// The end of a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogTail {
    pub text: String,
    /// `text` is the whole log (nothing was cut from its start)
    pub complete: bool,
}

impl LogTail {
    /// The last `max_bytes` of `log` (a character cut at the start is dropped, so the text is
    /// valid UTF-8; bytes that are not UTF-8 become U+FFFD).
    pub fn of(log: &[u8], max_bytes: usize) -> Self {
        if log.len() <= max_bytes {
            return LogTail {
                text: String::from_utf8_lossy(log).into_owned(),
                complete: true,
            };
        }
        let mut start = log.len() - max_bytes;
        // skip UTF-8 continuation bytes (10xxxxxx) of a character cut in two
        while start < log.len() && log[start] & 0b1100_0000 == 0b1000_0000 {
            start += 1;
        }
        LogTail {
            text: String::from_utf8_lossy(&log[start..]).into_owned(),
            complete: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_end_and_whole_characters() {
        assert_eq!(
            LogTail::of(b"short", 10),
            LogTail {
                text: "short".into(),
                complete: true
            }
        );
        let t = LogTail::of(b"0123456789", 4);
        assert_eq!((t.text.as_str(), t.complete), ("6789", false));
        // "é" is two bytes: cutting into it drops its second byte instead of garbling it
        let log = "aé-end".as_bytes();
        let t = LogTail::of(log, 5);
        assert_eq!(t.text, "-end");
        let t = LogTail::of(log, 6);
        assert_eq!(t.text, "é-end");
        assert_eq!(LogTail::of(b"abc", 0).text, "");
    }
}

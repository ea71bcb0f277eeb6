//! Logs from the API server (the path `kubectl logs` takes: the node's kubelet serves them).

use std::pin::Pin;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::io::{AsyncBufRead, AsyncReadExt};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};

use super::{LogError, LogSource, LogStream, LogTail};
use crate::executor::PodKey;

/// At most this many lines are asked for when keeping a tail (the API server has no "last N
/// bytes"; the lines are cut to the bytes after).
const TAIL_LINES: i64 = 10_000;

/// Logs read through the API server.
#[derive(Clone)]
pub struct KubeLogs {
    client: kube::Client,
}

impl KubeLogs {
    pub fn new(client: kube::Client) -> Self {
        KubeLogs { client }
    }

    fn pods(&self, pod: &PodKey) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &pod.namespace)
    }
}

fn source_error(pod: &PodKey, e: impl std::fmt::Display) -> LogError {
    LogError::Source {
        pod: pod.to_string(),
        message: e.to_string(),
    }
}

/// A missing Pod is `None`, not an error.
fn missing(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

type Reader = Pin<Box<dyn AsyncBufRead + Send>>;

/// Reads a byte stream from an async reader, a chunk at a time.
fn chunks(reader: Reader, pod: PodKey) -> LogStream {
    futures::stream::unfold(Some(reader), move |reader| {
        let pod = pod.clone();
        async move {
            let mut reader = reader?;
            let mut buf = vec![0u8; 16 * 1024];
            match reader.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(reader)))
                }
                Err(e) => Some((Err(source_error(&pod, e)), None)),
            }
        }
    })
    .boxed()
}

impl LogSource for KubeLogs {
    fn stream<'a>(
        &'a self,
        pod: &'a PodKey,
        follow: bool,
    ) -> BoxFuture<'a, Result<Option<LogStream>, LogError>> {
        async move {
            let params = LogParams {
                follow,
                ..LogParams::default()
            };
            match self.pods(pod).log_stream(&pod.name, &params).await {
                Ok(reader) => Ok(Some(chunks(Box::pin(reader), pod.clone()))),
                Err(e) if missing(&e) => Ok(None),
                Err(e) => Err(source_error(pod, e)),
            }
        }
        .boxed()
    }

    fn tail<'a>(
        &'a self,
        pod: &'a PodKey,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Option<LogTail>, LogError>> {
        async move {
            let params = LogParams {
                tail_lines: Some(TAIL_LINES),
                ..LogParams::default()
            };
            match self.pods(pod).logs(&pod.name, &params).await {
                Ok(text) => {
                    let lines = text.lines().count() as i64;
                    let mut tail = LogTail::of(text.as_bytes(), max_bytes);
                    tail.complete &= lines < TAIL_LINES;
                    Ok(Some(tail))
                }
                Err(e) if missing(&e) => Ok(None),
                Err(e) => Err(source_error(pod, e)),
            }
        }
        .boxed()
    }
}

//! `kubectl attach` on the node: `GET|POST /attach/{ns}/{pod}/{container}?
//! stdout=…&stderr=…` upgraded to the same websocket channel protocol as exec
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`). The container's output is
//! what its shim writes to the container's log file, so attaching follows
//! that file from its current end: new stdout records go to channel 1, new
//! stderr records to channel 2, until the container's streams close (the
//! shim's `.log.done` marker), then a Success status on channel 3.
//!
//! stdin is not offered: the shim starts the container with stdin on
//! /dev/null and keeps no handle a client could write to, so `attach -i`
//! gets a clear error instead of a session whose input goes nowhere.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;

use crate::exec::upgrade::Upgrade;
use crate::exec::{find_container, ExecError, ExecOptions};
use crate::logs;
use crate::runtime::runc::Runc;

/// Channels of the protocol used here.
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
/// How often the log file is looked at for new output.
const POLL: Duration = Duration::from_millis(100);

/// Errors answering an attach request (before the connection is upgraded).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// `-i`: the container's stdin cannot be reached.
    #[error("attaching to stdin is not supported: the container was started with stdin on /dev/null and its shim keeps no handle to it; attach to its output only (without -i/--stdin)")]
    Stdin,
    /// Neither stdout nor stderr was asked for.
    #[error("you must specify at least 1 of stdin, stdout, stderr")]
    NoStreams,
    /// The container has no log file on this node.
    #[error("container {0:?} has no output on this node")]
    NoLog(String),
    /// As for exec: container lookup, websocket handshake.
    #[error(transparent)]
    Exec(#[from] ExecError),
}

impl IntoResponse for AttachError {
    fn into_response(self) -> Response {
        match self {
            AttachError::Exec(e) => e.into_response(),
            other => {
                let code = match other {
                    AttachError::NoLog(_) => StatusCode::NOT_FOUND,
                    _ => StatusCode::BAD_REQUEST,
                };
                (code, [("content-type", "text/plain")], other.to_string()).into_response()
            }
        }
    }
}

/// Answers an attach request: checks it, then upgrades and follows the output.
pub async fn serve(
    runc: Runc,
    log_root: PathBuf,
    log_file: Option<PathBuf>,
    (ns, pod, container): (String, String, String),
    mut req: Request<Body>,
) -> Result<Response, AttachError> {
    let opts = ExecOptions::parse(req.uri().query().unwrap_or(""));
    if opts.stdin {
        return Err(AttachError::Stdin);
    }
    if !(opts.stdout || opts.stderr) {
        return Err(AttachError::NoStreams);
    }
    find_container(&runc, &log_root, &ns, &pod, &container).await?;
    let log = log_file.ok_or_else(|| AttachError::NoLog(container.clone()))?;
    let upgrade = Upgrade::take(&mut req)?;
    // Only what the container writes from now on, as upstream's attach.
    let start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    tracing::info!(%ns, %pod, %container, "attach");
    Ok(upgrade.respond("attach", move |ws| async move {
        follow(ws, &log, start, opts).await;
    }))
}

/// Sends the log's new records until the container's streams close or the
/// client goes away.
async fn follow<S>(ws: WebSocketStream<S>, log: &Path, start: u64, opts: ExecOptions)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let done = log.with_extension("log.done");
    let mut offset = start;
    loop {
        let finished = done.exists();
        let (frames, consumed) = new_output(log, offset, &opts);
        offset += consumed;
        for f in frames {
            if sink.send(f).await.is_err() {
                return;
            }
        }
        if finished && consumed == 0 {
            break;
        }
        tokio::select! {
            msg = incoming.next() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                // Input channels are not served; resize has no terminal to act on.
                Some(Ok(_)) => {}
            },
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    let status = json!({"metadata": {}, "status": "Success"});
    let mut frame = vec![ERROR];
    frame.extend_from_slice(status.to_string().as_bytes());
    let _ = sink.send(Message::Binary(Bytes::from(frame))).await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
}

/// The complete records after `offset` as channel frames (only the streams
/// asked for), and how many bytes they took.
fn new_output(log: &Path, offset: u64, opts: &ExecOptions) -> (Vec<Message>, u64) {
    let mut data = Vec::new();
    let read = std::fs::File::open(log).and_then(|mut f| {
        f.seek(SeekFrom::Start(offset))?;
        f.read_to_end(&mut data)
    });
    if read.is_err() {
        return (Vec::new(), 0);
    }
    let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let frames = records_to_frames(&data[..complete], opts);
    (frames, complete as u64)
}

/// CRI records → channel frames; a partial record's text goes without newline.
pub fn records_to_frames(data: &[u8], opts: &ExecOptions) -> Vec<Message> {
    let mut frames = Vec::new();
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Some(record) = logs::parse(line) else {
            continue;
        };
        let channel = match record.stream {
            "stderr" if opts.stderr => STDERR,
            // With a terminal upstream merges stderr into stdout.
            "stderr" if opts.tty && opts.stdout => STDOUT,
            "stdout" if opts.stdout => STDOUT,
            _ => continue,
        };
        let mut frame = Vec::with_capacity(record.text.len() + 2);
        frame.push(channel);
        frame.extend_from_slice(record.text);
        if record.full {
            frame.push(b'\n');
        }
        frames.push(Message::Binary(Bytes::from(frame)));
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{cri_line, Stream};

    fn payloads(frames: &[Message]) -> Vec<Vec<u8>> {
        frames
            .iter()
            .map(|m| match m {
                Message::Binary(b) => b.to_vec(),
                other => panic!("not binary: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn records_go_to_their_stream_channels() {
        let mut data = cri_line(Stream::Stdout, true, b"out");
        data.extend(cri_line(Stream::Stderr, true, b"err"));
        data.extend(cri_line(Stream::Stdout, false, b"part"));
        let both = ExecOptions::parse("stdout=true&stderr=true");
        assert_eq!(
            payloads(&records_to_frames(&data, &both)),
            [
                b"\x01out\n".to_vec(),
                b"\x02err\n".to_vec(),
                b"\x01part".to_vec()
            ]
        );
        let only_out = ExecOptions::parse("stdout=true");
        assert_eq!(
            payloads(&records_to_frames(&data, &only_out)),
            [b"\x01out\n".to_vec(), b"\x01part".to_vec()]
        );
    }
}

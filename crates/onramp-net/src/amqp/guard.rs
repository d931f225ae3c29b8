//! A check of every AMQP frame before the AMQP crate decodes it.
//!
//! The decoder Onramp uses (serde_amqp, under fe2o3-amqp) allocates the
//! length a string, binary, list or map declares before it reads the bytes,
//! so one frame of a few bytes that declares 4 GiB would make the server
//! allocate 4 GiB (found by the `amqp_sasl` fuzz target). [`check_values`]
//! walks the encoding without decoding it: every declared size must fit in
//! what is left of its container, every declared count in its size, and
//! nesting stays shallow. [`FrameGuard`] applies it to each frame of a
//! connection, so only frames whose declared sizes are true reach the crate.
//! A frame must hold whole values: a message split over several transfers
//! is refused (a DPS request fits in one frame).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Nesting deeper than this is refused (DPS messages nest three levels).
const MAX_DEPTH: usize = 16;

/// Checks that `bytes` is a sequence of whole AMQP-encoded values whose
/// declared sizes and counts are true.
pub fn check_values(mut bytes: &[u8]) -> Result<(), String> {
    while !bytes.is_empty() {
        bytes = value(bytes, 0)?;
    }
    Ok(())
}

fn take(bytes: &[u8], n: usize) -> Result<(&[u8], &[u8]), String> {
    if bytes.len() < n {
        return Err(format!(
            "a value declares {n} bytes where {} are left",
            bytes.len()
        ));
    }
    Ok(bytes.split_at(n))
}

fn size(bytes: &[u8], width: usize) -> Result<(usize, &[u8]), String> {
    let (raw, rest) = take(bytes, width)?;
    let n = raw.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
    Ok((n, rest))
}

/// One value at the start of `bytes`; returns what follows it.
fn value(bytes: &[u8], depth: usize) -> Result<&[u8], String> {
    if depth > MAX_DEPTH {
        return Err("values nested too deep".into());
    }
    let (code, rest) = take(bytes, 1)?;
    let code = code[0];
    if code == 0x00 {
        // A described value: descriptor, then the value.
        let rest = value(rest, depth + 1)?;
        return value(rest, depth + 1);
    }
    constructed(code, rest, depth)
}

/// The data of a value whose constructor is `code`.
fn constructed(code: u8, rest: &[u8], depth: usize) -> Result<&[u8], String> {
    let fixed = |n| take(rest, n).map(|(_, r)| r);
    match code >> 4 {
        0x4 => Ok(rest),
        0x5 => fixed(1),
        0x6 => fixed(2),
        0x7 => fixed(4),
        0x8 => fixed(8),
        0x9 => fixed(16),
        0xa | 0xb => {
            let (n, rest) = size(rest, if code >> 4 == 0xa { 1 } else { 4 })?;
            take(rest, n).map(|(_, r)| r)
        }
        0xc | 0xd => {
            let width = if code >> 4 == 0xc { 1 } else { 4 };
            let (n, rest) = size(rest, width)?;
            let (body, after) = take(rest, n)?;
            let (count, mut items) = size(body, width)?;
            if count > body.len() {
                return Err(format!("{count} items declared in {n} bytes"));
            }
            for _ in 0..count {
                items = value(items, depth + 1)?;
            }
            if !items.is_empty() {
                return Err("a list or map longer than its items".into());
            }
            Ok(after)
        }
        0xe | 0xf => {
            let width = if code >> 4 == 0xe { 1 } else { 4 };
            let (n, rest) = size(rest, width)?;
            let (body, after) = take(rest, n)?;
            let (count, body) = size(body, width)?;
            if count > body.len() {
                return Err(format!("{count} array items declared in {n} bytes"));
            }
            // One constructor (possibly described) for all the items.
            let (element, mut items) = take(body, 1)?;
            let mut element = element[0];
            if element == 0x00 {
                items = value(items, depth + 1)?;
                let (code, rest) = take(items, 1)?;
                element = code[0];
                items = rest;
            }
            for _ in 0..count {
                items = constructed(element, items, depth + 1)?;
            }
            if !items.is_empty() {
                return Err("an array longer than its items".into());
            }
            Ok(after)
        }
        _ => Err(format!("unknown constructor 0x{code:02x}")),
    }
}

/// Checks a frame (its size included): the size within `max`, a data
/// offset within the frame, and whole values with true sizes after it.
pub fn check_frame(frame: &[u8], max: usize) -> Result<(), String> {
    if frame.len() < 8 || frame.len() > max {
        return Err(format!("a frame of {} bytes (at most {max})", frame.len()));
    }
    let doff = usize::from(frame[4]) * 4;
    if doff < 8 || doff > frame.len() {
        return Err(format!("a data offset of {doff} bytes"));
    }
    check_values(&frame[doff..])
}

/// A stream whose incoming AMQP frames are checked (see [`check_frame`])
/// before they are read; the protocol header passes as it is. A frame that
/// fails ends the stream with an error.
#[derive(Debug)]
pub struct FrameGuard<S> {
    inner: S,
    max_frame: usize,
    /// Bytes of the header still to pass unchecked.
    header_left: usize,
    /// The frame being read.
    frame: Vec<u8>,
    /// Of a checked frame, the bytes already handed out.
    handed: Option<usize>,
}

impl<S> FrameGuard<S> {
    /// `inner` starts with the 8-byte protocol header.
    pub fn new(inner: S, max_frame: usize) -> Self {
        Self {
            inner,
            max_frame,
            header_left: 8,
            frame: Vec::new(),
            handed: None,
        }
    }
}

fn invalid(e: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.header_left > 0 {
            let mut header = [0u8; 8];
            let n = this.header_left.min(buf.remaining());
            let mut read = ReadBuf::new(&mut header[..n]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let got = read.filled().len();
            buf.put_slice(&header[..got]);
            this.header_left -= got;
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(handed) = this.handed {
                let n = (this.frame.len() - handed).min(buf.remaining());
                buf.put_slice(&this.frame[handed..handed + n]);
                if handed + n == this.frame.len() {
                    this.handed = None;
                    this.frame.clear();
                } else {
                    this.handed = Some(handed + n);
                }
                return Poll::Ready(Ok(()));
            }
            // Read the size, then the rest of the frame.
            let want = if this.frame.len() < 4 {
                4
            } else {
                let declared = u32::from_be_bytes([
                    this.frame[0],
                    this.frame[1],
                    this.frame[2],
                    this.frame[3],
                ]);
                let declared = usize::try_from(declared).unwrap_or(usize::MAX);
                if declared < 8 || declared > this.max_frame {
                    return Poll::Ready(Err(invalid(format!(
                        "a frame of {declared} bytes (at most {})",
                        this.max_frame
                    ))));
                }
                declared
            };
            if this.frame.len() == want && want > 4 {
                check_frame(&this.frame, this.max_frame).map_err(invalid)?;
                this.handed = Some(0);
                continue;
            }
            let have = this.frame.len();
            this.frame.resize(want, 0);
            let mut read = ReadBuf::new(&mut this.frame[have..]);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut read);
            let got = read.filled().len();
            this.frame.truncate(have + got);
            ready!(polled)?;
            if got == 0 {
                // The end of the stream: only between frames is it clean.
                if have == 0 {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_sizes_must_be_true() {
        // str8 "PLAIN", a list of two, a described value.
        assert!(check_values(b"\xa3\x05PLAIN").is_ok());
        assert!(check_values(b"\x00\x53\x41\xc0\x03\x02\x40\x41").is_ok());
        // str32 declaring ~4 GiB in a few bytes (the fuzz finding).
        assert!(check_values(b"\xb1\xff\xfe\xb1\x00\x00\x00\x29").is_err());
        // A list declaring more items than bytes, or more bytes than there are.
        assert!(check_values(b"\xc0\x02\xff\x40").is_err());
        assert!(check_values(b"\xc0\x09\x01\x40").is_err());
        // An array of three ubytes; one claiming a million.
        assert!(check_values(b"\xe0\x05\x03\x50\x01\x02\x03").is_ok());
        assert!(check_values(b"\xf0\x00\x00\x00\x09\x00\x0f\x42\x40\x50\x01\x02\x03\x04").is_err());
        // Nesting.
        let deep: Vec<u8> = std::iter::repeat_n([0xc0u8, 0x00, 0x01], 40)
            .flatten()
            .collect();
        assert!(check_values(&deep).is_err());
        assert!(check_values(b"\x01").is_err());
    }

    #[test]
    fn frames_need_a_true_size_and_offset() {
        // An empty frame (a heartbeat).
        assert!(check_frame(b"\x00\x00\x00\x08\x02\x00\x00\x00", 512).is_ok());
        assert!(check_frame(b"\x00\x00\x00\x08\x01\x00\x00\x00", 512).is_err());
        assert!(check_frame(b"\x00\x00\x00\x09\x02\x00\x00\x00\x40", 8).is_err());
    }
}

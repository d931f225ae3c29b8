//! What an AMQP client sends after its protocol header (and SASL, if any):
//! a stream of frames, each checked by `amqp::guard` as `FrameGuard` checks
//! it (size within the limit, data offset, whole values with true sizes)
//! and, when it passes, decoded by fe2o3-amqp's frame decoder as the
//! connection would decode it. The stream ends at the first frame the
//! guard refuses, as the connection does.
#![no_main]

use bytes::BytesMut;
use fe2o3_amqp::frames::amqp::FrameDecoder;
use libfuzzer_sys::fuzz_target;
use onramp_net::amqp::guard::check_frame;
use tokio_util::codec::Decoder;

/// The servers' default `max-frame-size` (`AmqpLimits`).
const MAX_FRAME: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while rest.len() >= 4 {
        let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if size > rest.len() {
            return;
        }
        let (frame, after) = rest.split_at(size);
        if check_frame(frame, MAX_FRAME).is_err() {
            return;
        }
        let mut body = BytesMut::from(&frame[4..]);
        let _ = FrameDecoder {}.decode(&mut body);
        rest = after;
    }
});

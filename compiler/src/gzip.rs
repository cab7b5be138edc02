//! Stage `bundle`: gzip of the finished tar stream, compressed in parallel; invariant: the bytes
//! depend only on the input and the fixed level and chunk size — never on the number of threads
//! — and they form one ordinary gzip member any `gzip -d` / `tar -xz` reads.
//!
//! Why not a plain `GzEncoder`: deflate is the largest single cost of compiling a big project,
//! and it is sequential. The stream is cut into fixed-size chunks, each deflated on its own with
//! the previous chunk's last 32 KiB as its dictionary (so matches across the cut are still
//! found), every chunk but the last ending in a sync flush (which byte-aligns it); the raw
//! deflate pieces then concatenate into one valid stream. This is the scheme of `pigz`.

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Bytes of input per independently compressed chunk. A constant: it shapes the output, so it
/// is part of what makes an archive reproducible.
const CHUNK: usize = 128 * 1024;

/// Deflate's window: the most history a chunk can refer back to.
const WINDOW: usize = 32 * 1024;

/// One gzip member holding `data`, compressed at `level` (0–9), header mtime 0, no file name.
pub fn gzip(data: &[u8], level: u32) -> std::io::Result<Vec<u8>> {
    let starts: Vec<usize> = (0..data.len().max(1)).step_by(CHUNK).collect();
    let pieces = crate::par::map(&starts, |&start| {
        let end = (start + CHUNK).min(data.len());
        let dict = &data[start.saturating_sub(WINDOW)..start];
        deflate_chunk(&data[start..end], dict, level, end == data.len())
    });

    let mut crc = Crc::new();
    crc.update(data);
    let total: usize = pieces.iter().map(|p| p.as_ref().map_or(0, Vec::len)).sum();
    let mut out = Vec::with_capacity(10 + total + 8);
    // ID1 ID2, CM=deflate, FLG=0, MTIME=0, XFL=0, OS=255 (unknown: the bytes do not depend on
    // the building system).
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    for piece in pieces {
        out.extend_from_slice(&piece?);
    }
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the length modulo 2^32, as RFC 1952 defines it.
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Ok(out)
}

/// Raw deflate of one chunk, primed with `dict`; a sync flush at the end unless it is the last.
fn deflate_chunk(chunk: &[u8], dict: &[u8], level: u32, last: bool) -> std::io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(level), false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(std::io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(chunk.len() / 2 + 64);
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(4096));
        }
        let status = c
            .compress_vec(&chunk[consumed..], &mut out, flush)
            .map_err(std::io::Error::other)?;
        let all_in = c.total_in() as usize == chunk.len();
        match status {
            Status::StreamEnd => break,
            // A sync flush is complete once all input is in and output space was left over.
            Status::Ok | Status::BufError
                if !last && all_in && out.capacity() - out.len() >= 64 =>
            {
                break
            }
            Status::Ok | Status::BufError => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    /// Text-like input with repeats that cross chunk boundaries, and some incompressible noise.
    fn sample(len: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..len)
            .map(|i| {
                if (i / 5000) % 3 == 0 {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                } else {
                    b"apt-get install -y -q --no-install-recommends hello\n"[i % 52]
                }
            })
            .collect()
    }

    #[test]
    fn round_trips_at_every_size_around_the_chunk_edges() {
        for len in [
            0,
            1,
            WINDOW - 1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK,
            3 * CHUNK + 777,
        ] {
            let data = sample(len);
            let gz = gzip(&data, 6).unwrap();
            assert_eq!(gunzip(&gz), data, "length {len}");
        }
    }

    #[test]
    fn the_system_gzip_reads_it() {
        let Ok(probe) = std::process::Command::new("gzip").arg("--version").output() else {
            assert!(std::env::var_os("CI").is_none(), "`gzip` missing under CI");
            eprintln!("skipped: `gzip` not installed");
            return;
        };
        assert!(probe.status.success());
        let data = sample(5 * CHUNK / 2);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.gz");
        std::fs::write(&file, gzip(&data, 6).unwrap()).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, data);
    }

    #[test]
    fn compresses_about_as_well_as_one_stream() {
        let data = sample(6 * CHUNK);
        let ours = gzip(&data, 6).unwrap().len();
        let mut one = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        std::io::Write::write_all(&mut one, &data).unwrap();
        let one = one.finish().unwrap().len();
        // The dictionaries keep matches across cuts; only flush markers and block headers are
        // added (a few bytes per chunk).
        assert!(
            ours <= one + one / 50 + 64,
            "ours {ours} vs one stream {one}"
        );
    }
}

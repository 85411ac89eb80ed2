//! TensorBoard event files of a run's metrics: written as the run's records arrive (`[log]
//! tensorboard = true`) or afterwards from its records (`gaplab export tensorboard`), and read
//! back with both checksums verified ([`read`], for tests and users' tools).
//!
//! On the runlog floor: it reads `event` records and knows nothing of the trainer.
//!
//! Tags are the ones Hugging Face's Trainer (and so TRL) writes through its TensorBoard
//! callback, whose `rewrite_logs` (transformers/integrations/integration_utils.py) puts a
//! metric named `eval_X` under `eval/X`, `test_X` under `test/X` and any other under `train/X`:
//! a step's `loss` is `train/loss`, `rewards/chosen` is `train/rewards/chosen`, an eval's
//! `eval_rewards/margins` is `eval/rewards/margins`. The name alone decides, as there: the
//! `epoch` of a Trainer's eval record is `train/epoch` (gaplab's own eval metrics all start
//! with `eval_`). Each record becomes one event at the optimizer step, with the record's time
//! as its wall time and one scalar (`simple_value`, a 32-bit float) per metric.
//!
//! Non-finite values (a NaN loss, an infinite ratio) are written as they are: TensorBoard reads
//! NaN and infinities as floats and leaves them out of its charts' axes, and dropping them would
//! hide when a run went wrong. A value beyond f32's range becomes an infinity of its sign.
//!
//! The file format: TFRecord framing (u64 length, little-endian; masked CRC32C of those 8
//! bytes; the data; masked CRC32C of the data), each record a serialized `tensorboard.Event`,
//! the first one carrying `file_version: "brain.Event:2"`. The few protobuf fields needed are
//! encoded here by hand.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::event::Event;

/// The folder of a run directory that holds its event files.
pub const DIR: &str = "tb";

/// What TensorBoard looks for in a file name (`*tfevents*`).
pub const MARKER: &str = "tfevents";

const FILE_VERSION: &str = "brain.Event:2";

/// TFRecord's checksum: CRC32C, rotated and offset so that a checksum of data that holds
/// checksums is not itself trivially zero.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8 & 0x7f) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// A protobuf key: field number and wire type.
fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, field << 3 | wire);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    key(out, field, 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// What an event carries besides its time and step.
enum Body<'a> {
    /// `file_version` (3): the first event of a file.
    FileVersion(&'a str),
    /// `session_log` (7) with `status: START` (1): a run (re)starts at this step, and
    /// TensorBoard drops whatever earlier files hold at this step or later (a resumed run's
    /// steps after its checkpoint, recomputed now).
    SessionStart,
    /// `summary` (5): `Summary{value (1)}` of `Summary.Value{tag (1), simple_value (2)}`.
    Scalars(&'a [(String, f32)]),
}

/// `Event{wall_time (1, double), step (2, int64), ...}`.
fn encode_event(wall_time: f64, step: i64, body: Body) -> Vec<u8> {
    let mut ev = Vec::new();
    key(&mut ev, 1, 1);
    ev.extend_from_slice(&wall_time.to_le_bytes());
    key(&mut ev, 2, 0);
    // int64 is a two's-complement varint.
    varint(&mut ev, step as u64);
    match body {
        Body::FileVersion(v) => bytes_field(&mut ev, 3, v.as_bytes()),
        Body::SessionStart => {
            let mut log = Vec::new();
            key(&mut log, 1, 0);
            varint(&mut log, 1);
            bytes_field(&mut ev, 7, &log);
        }
        Body::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, x) in values {
                let mut value = Vec::new();
                bytes_field(&mut value, 1, tag.as_bytes());
                key(&mut value, 2, 5);
                value.extend_from_slice(&x.to_le_bytes());
                bytes_field(&mut summary, 1, &value);
            }
            bytes_field(&mut ev, 5, &summary);
        }
    }
    ev
}

/// One TFRecord: length, its checksum, the data, its checksum.
fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The TensorBoard tag of a metric, as the Trainer's `rewrite_logs` makes it.
pub fn tag(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("eval_") {
        format!("eval/{rest}")
    } else if let Some(rest) = name.strip_prefix("test_") {
        format!("test/{rest}")
    } else {
        format!("train/{name}")
    }
}

/// An event's scalars: step, wall time, (tag, value) in name order.
pub type Scalars = (usize, f64, Vec<(String, f32)>);

/// The scalars an event puts in TensorBoard; None for events without metrics.
pub fn scalars(ev: &Event) -> Option<Scalars> {
    let (step, time, metrics) = match ev {
        Event::Step(m) => (m.step, m.time, &m.metrics),
        Event::Eval(r) => (r.step, r.time, &r.metrics),
        _ => return None,
    };
    let values = metrics.iter().map(|(k, &x)| (tag(k), x as f32)).collect();
    Some((step, time, values))
}

/// This machine's name, as TensorBoard's own writers put it in file names.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it (or
    // truncates, and the last byte is kept 0).
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    let name = if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    // A name goes into a file name: nothing that could make it a path.
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// An event file being appended to; each record reaches the file (not a buffer) when written,
/// so a viewer following the file sees every step at once.
pub struct EventFile {
    path: PathBuf,
    file: File,
}

impl EventFile {
    /// A new event file in `dir` (created if needed):
    /// `events.out.tfevents.<unix secs>.<host>.<pid>.gaplab`, one per process start as
    /// TensorBoard's writers do. TensorBoard reads a folder's files in name order, so the
    /// seconds are made later than those of every file already there (two starts within a
    /// second would otherwise be ordered by pid); a name already taken gets a number after it.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let now = crate::event::now();
        let prefix = format!("events.out.{MARKER}.");
        let latest = event_files(dir)
            .iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.strip_prefix(prefix.as_str())?;
                name.split('.').next()?.parse::<u64>().ok()
            })
            .max();
        let secs = match latest {
            Some(l) if l >= now as u64 => l + 1,
            _ => now as u64,
        };
        let base = format!(
            "{prefix}{secs:010}.{}.{}.gaplab",
            hostname(),
            std::process::id()
        );
        for i in 1.. {
            let name = if i == 1 {
                base.clone()
            } else {
                format!("{base}.{i}")
            };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let mut f = Self { path, file };
                    f.append(&encode_event(now, 0, Body::FileVersion(FILE_VERSION)))?;
                    return Ok(f);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        }
        unreachable!()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&mut self, event: &[u8]) -> Result<()> {
        crate::fault::disk("tensorboard-write")
            .and_then(|()| self.file.write_all(&frame(event)))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// One event with `values` at `step` (nothing when there are none).
    pub fn write_scalars(
        &mut self,
        step: usize,
        wall_time: f64,
        values: &[(String, f32)],
    ) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.append(&encode_event(wall_time, step as i64, Body::Scalars(values)))
    }

    /// Marks a run's (re)start: TensorBoard then ignores what earlier files hold from `step`
    /// on.
    pub fn write_session_start(&mut self, step: usize, wall_time: f64) -> Result<()> {
        self.append(&encode_event(wall_time, step as i64, Body::SessionStart))
    }

    /// The scalars of `ev`, if it has any.
    pub fn write_event(&mut self, ev: &Event) -> Result<()> {
        match scalars(ev) {
            Some((step, time, values)) => self.write_scalars(step, time, &values),
            None => Ok(()),
        }
    }
}

/// Event files in `dir` (TensorBoard's own selection: names holding `tfevents`), sorted.
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(MARKER))
        })
        .collect();
    v.sort();
    v
}

/// Writes the scalars of `events` (a run's records) to a new event file in `dir`; returns it
/// and how many events with scalars it holds.
pub fn export(events: &[Event], dir: &Path) -> Result<(PathBuf, usize)> {
    let mut f = EventFile::create(dir)?;
    let mut n = 0;
    for ev in events {
        if let Some((step, time, values)) = scalars(ev) {
            if !values.is_empty() {
                f.write_scalars(step, time, &values)?;
                n += 1;
            }
        }
    }
    Ok((f.path, n))
}

/// One event read back from an event file.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    /// A `SessionLog` with status START.
    pub session_start: bool,
    /// (tag, simple_value) of its summary, in file order.
    pub values: Vec<(String, f32)>,
}

/// A protobuf message read field by field: (field number, payload), fields of unknown numbers
/// left to the caller to skip.
struct Fields<'a> {
    data: &'a [u8],
    pos: usize,
}

enum Payload<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

fn read_varint(data: &[u8], pos: &mut usize) -> Result<u64> {
    let mut x = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = data.get(*pos) else {
            bail!("a varint runs past the end of its message");
        };
        *pos += 1;
        x |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(x);
        }
    }
    bail!("a varint longer than 10 bytes")
}

impl<'a> Fields<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            bail!("a field runs past the end of its message");
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next_field(&mut self) -> Result<Option<(u64, Payload<'a>)>> {
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        let k = read_varint(self.data, &mut self.pos)?;
        let payload = match k & 7 {
            0 => Payload::Varint(read_varint(self.data, &mut self.pos)?),
            1 => Payload::Fixed64(self.take(8)?.try_into()?),
            2 => {
                let n = read_varint(self.data, &mut self.pos)?;
                Payload::Bytes(self.take(usize::try_from(n)?)?)
            }
            5 => Payload::Fixed32(self.take(4)?.try_into()?),
            w => bail!("wire type {w} (groups and unknown types are not used by events)"),
        };
        Ok(Some((k >> 3, payload)))
    }
}

fn decode_value(data: &[u8]) -> Result<(String, f32)> {
    let (mut tag, mut value) = (String::new(), None);
    let mut f = Fields::new(data);
    while let Some((field, p)) = f.next_field()? {
        match (field, p) {
            (1, Payload::Bytes(b)) => tag = String::from_utf8(b.to_vec())?,
            (2, Payload::Fixed32(b)) => value = Some(f32::from_le_bytes(b)),
            _ => {}
        }
    }
    let Some(value) = value else {
        bail!("summary value {tag:?} has no simple_value");
    };
    Ok((tag, value))
}

fn decode_event(data: &[u8]) -> Result<Record> {
    let mut r = Record {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        session_start: false,
        values: Vec::new(),
    };
    let mut f = Fields::new(data);
    while let Some((field, p)) = f.next_field()? {
        match (field, p) {
            (1, Payload::Fixed64(b)) => r.wall_time = f64::from_le_bytes(b),
            (2, Payload::Varint(x)) => r.step = x as i64,
            (3, Payload::Bytes(b)) => r.file_version = Some(String::from_utf8(b.to_vec())?),
            (7, Payload::Bytes(b)) => {
                let mut s = Fields::new(b);
                while let Some((field, p)) = s.next_field()? {
                    if let (1, Payload::Varint(1)) = (field, p) {
                        r.session_start = true;
                    }
                }
            }
            (5, Payload::Bytes(b)) => {
                let mut s = Fields::new(b);
                while let Some((field, p)) = s.next_field()? {
                    if let (1, Payload::Bytes(v)) = (field, p) {
                        r.values.push(decode_value(v)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(r)
}

/// Every event of an event file, both checksums of each record verified.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let at = pos;
        let ctx = || format!("{}: record at byte {at}", path.display());
        let Some(head) = data.get(pos..pos + 12) else {
            bail!("{}: truncated header", ctx());
        };
        let (len, len_crc) = head.split_at(8);
        let want = u32::from_le_bytes(len_crc.try_into()?);
        if masked_crc(len) != want {
            bail!("{}: length checksum mismatch", ctx());
        }
        let n = usize::try_from(u64::from_le_bytes(len.try_into()?))?;
        let Some(end) = (pos + 12).checked_add(n).filter(|e| e + 4 <= data.len()) else {
            bail!("{}: truncated data ({n} bytes announced)", ctx());
        };
        let body = &data[pos + 12..end];
        let want = u32::from_le_bytes(data[end..end + 4].try_into()?);
        if masked_crc(body) != want {
            bail!("{}: data checksum mismatch", ctx());
        }
        out.push(decode_event(body).with_context(ctx)?);
        pos = end + 4;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StepMetrics;

    #[test]
    fn crc32c_and_its_mask_are_tfrecords() {
        // The check value of CRC-32C (Castagnoli).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // TensorBoard's own masked_crc32c (tensorflow_stub) of 8 zero bytes and of a string.
        assert_eq!(masked_crc(&[0u8; 8]), 0x0798_0329);
        assert_eq!(masked_crc(b"brain.Event:2"), 0x7c06_01ee);
    }

    #[test]
    fn tags_are_the_trainers() {
        assert_eq!(tag("loss"), "train/loss");
        assert_eq!(tag("rewards/chosen"), "train/rewards/chosen");
        assert_eq!(tag("eval_loss"), "eval/loss");
        assert_eq!(tag("eval_rewards/margins"), "eval/rewards/margins");
        assert_eq!(tag("epoch"), "train/epoch");
        assert_eq!(tag("test_loss"), "test/loss");
    }

    #[test]
    fn events_read_back_and_corruption_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = EventFile::create(tmp.path()).unwrap();
        let step = Event::Step(StepMetrics {
            step: 300,
            time: 1234.5,
            metrics: [
                ("loss".to_string(), 0.25),
                ("grad_norm".into(), f64::NAN),
                ("big".into(), 1e300),
            ]
            .into_iter()
            .collect(),
        });
        f.write_event(&step).unwrap();
        let path = f.path().to_path_buf();
        assert!(path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("events.out.tfevents."));
        let got = read(&path).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!((got[1].step, got[1].wall_time), (300, 1234.5));
        let v = &got[1].values;
        assert_eq!(v[0], ("train/big".to_string(), f32::INFINITY));
        assert_eq!(v[1].0, "train/grad_norm");
        assert!(v[1].1.is_nan());
        assert_eq!(v[2], ("train/loss".to_string(), 0.25));
        // A second writer in the same second gets a file of its own.
        let g = EventFile::create(tmp.path()).unwrap();
        assert_ne!(g.path(), path);
        assert_eq!(event_files(tmp.path()).len(), 2);

        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", read(&path).unwrap_err());
        assert!(err.contains("data checksum mismatch"), "{err}");
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", read(&path).unwrap_err());
        assert!(err.contains("truncated data"), "{err}");
    }
}

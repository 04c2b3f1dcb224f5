//! Self-containment of a disk image. qcow2 and VMDK images can name other
//! files by path: a backing file, an external data file, a descriptor's
//! extents. QEMU opens whatever they name, with the rights of the process
//! reading the image, so a hostile image could pull any host file into a
//! sandbox. msb reads only images that hold all their data themselves; this
//! module checks the headers before any QEMU sees the image.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use msb_spec::DiskFormat;

/// Why an image is refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read the image header")]
    Read(#[source] io::Error),
    #[error("not a {0} image (its header does not start with the {0} magic)")]
    NotFormat(DiskFormat),
    #[error(
        "the image names a backing file ({0}); msb reads only self-contained images (merge it with `qemu-img convert` or `qemu-img rebase -b ''`)"
    )]
    Backing(String),
    #[error(
        "the image keeps its data in an external file; msb reads only self-contained images (convert it with `qemu-img convert`)"
    )]
    ExternalData,
    #[error(
        "the image is a VMDK descriptor that names its data files by path; msb reads only self-contained (monolithicSparse) VMDK images"
    )]
    VmdkDescriptor,
    #[error("version 3 (COWD) VMDK images are not supported; convert it with `qemu-img convert`")]
    VmdkCowd,
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// qcow2 incompatible feature bit 2: the data lives in another file.
const QCOW2_EXTERNAL_DATA: u64 = 1 << 2;
const VMDK4_MAGIC: &[u8; 4] = b"KDMV";
const VMDK3_MAGIC: &[u8; 4] = b"COWD";
/// How much of an embedded VMDK descriptor is read: real ones are a few
/// hundred bytes.
const VMDK_DESCRIPTOR_MAX: u64 = 64 * 1024;

/// Checks that `file`, an image of `format`, names no other file.
pub fn check_self_contained(file: &File, format: DiskFormat) -> Result<(), ImageError> {
    match format {
        DiskFormat::Raw => Ok(()),
        DiskFormat::Qcow2 => check_qcow2(file),
        DiskFormat::Vmdk => check_vmdk(file),
    }
}

/// Reads exactly `buf.len()` bytes at `offset`; a short file reads as zeros
/// past its end, which no check below accepts as a valid header.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ImageError::Read(e)),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("four bytes"))
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("eight bytes"))
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("eight bytes"))
}

/// A name from the image, shown escaped: the image is hostile and the
/// message may reach a terminal.
fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).escape_debug().to_string()
}

fn check_qcow2(file: &File) -> Result<(), ImageError> {
    let mut h = [0u8; 80];
    read_at(file, &mut h, 0)?;
    if &h[..4] != QCOW2_MAGIC {
        return Err(ImageError::NotFormat(DiskFormat::Qcow2));
    }
    let version = be32(&h[4..]);
    let backing_offset = be64(&h[8..]);
    if backing_offset != 0 {
        let len = be32(&h[16..]).min(1024) as usize;
        let mut name = vec![0u8; len];
        read_at(file, &mut name, backing_offset)?;
        return Err(ImageError::Backing(shown(&name)));
    }
    if version >= 3 && be64(&h[72..]) & QCOW2_EXTERNAL_DATA != 0 {
        return Err(ImageError::ExternalData);
    }
    Ok(())
}

fn check_vmdk(file: &File) -> Result<(), ImageError> {
    let mut h = [0u8; 44];
    read_at(file, &mut h, 0)?;
    match &h[..4] {
        m if m == VMDK4_MAGIC => {}
        m if m == VMDK3_MAGIC => return Err(ImageError::VmdkCowd),
        _ if h
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) =>
        {
            return Err(ImageError::VmdkDescriptor);
        }
        _ => return Err(ImageError::NotFormat(DiskFormat::Vmdk)),
    }
    // A sparse header with no capacity stands for its embedded descriptor,
    // whose extents QEMU then opens by path.
    let capacity = le64(&h[12..]);
    if capacity == 0 {
        return Err(ImageError::VmdkDescriptor);
    }
    let (desc_sector, desc_sectors) = (le64(&h[28..]), le64(&h[36..]));
    if desc_sector != 0 && desc_sectors != 0 {
        let len = desc_sectors.saturating_mul(512).min(VMDK_DESCRIPTOR_MAX) as usize;
        let mut desc = vec![0u8; len];
        read_at(file, &mut desc, desc_sector.saturating_mul(512))?;
        for line in desc.split(|&b| b == b'\n') {
            let line = line.trim_ascii();
            if let Some(rest) = line.strip_prefix(b"parentFileNameHint") {
                let value = rest
                    .trim_ascii()
                    .strip_prefix(b"=")
                    .unwrap_or(rest)
                    .trim_ascii();
                let value = value.strip_prefix(b"\"").unwrap_or(value);
                let value = value.strip_suffix(b"\"").unwrap_or(value);
                if !value.is_empty() {
                    return Err(ImageError::Backing(shown(value)));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str]) -> bool {
        match Command::new("qemu-img").args(args).output() {
            Ok(o) if o.status.success() => true,
            Ok(o) => panic!("qemu-img {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => {
                eprintln!("skipped: qemu-img cannot run ({e}); install qemu-utils");
                false
            }
        }
    }

    fn check(path: &std::path::Path, format: DiskFormat) -> Result<(), ImageError> {
        check_self_contained(&File::open(path).unwrap(), format)
    }

    #[test]
    fn images_made_by_qemu_img() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
        std::fs::write(p("base.raw"), vec![0u8; 1 << 20]).unwrap();
        if !qemu_img(&["create", "-q", "-f", "qcow2", &p("plain.qcow2"), "1M"]) {
            return;
        }
        check(dir.path().join("plain.qcow2").as_ref(), DiskFormat::Qcow2).unwrap();
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &p("base.raw"),
            "-F",
            "raw",
            &p("backed.qcow2"),
        ]);
        match check(dir.path().join("backed.qcow2").as_ref(), DiskFormat::Qcow2) {
            Err(ImageError::Backing(name)) => assert_eq!(name, p("base.raw")),
            other => panic!("backed qcow2: {other:?}"),
        }
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={},data_file_raw=on", p("base.raw")),
            &p("data.qcow2"),
            "1M",
        ]);
        assert!(matches!(
            check(dir.path().join("data.qcow2").as_ref(), DiskFormat::Qcow2),
            Err(ImageError::ExternalData)
        ));
        qemu_img(&["create", "-q", "-f", "vmdk", &p("plain.vmdk"), "1M"]);
        check(dir.path().join("plain.vmdk").as_ref(), DiskFormat::Vmdk).unwrap();
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            &p("flat.vmdk"),
            "1M",
        ]);
        assert!(matches!(
            check(dir.path().join("flat.vmdk").as_ref(), DiskFormat::Vmdk),
            Err(ImageError::VmdkDescriptor)
        ));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            &p("plain.vmdk"),
            "-F",
            "vmdk",
            &p("child.vmdk"),
        ]);
        match check(dir.path().join("child.vmdk").as_ref(), DiskFormat::Vmdk) {
            Err(ImageError::Backing(name)) => assert!(name.contains("plain.vmdk"), "{name}"),
            other => panic!("vmdk with a parent: {other:?}"),
        }
        // The wrong format, and a file too short for any header.
        assert!(matches!(
            check(dir.path().join("plain.vmdk").as_ref(), DiskFormat::Qcow2),
            Err(ImageError::NotFormat(DiskFormat::Qcow2))
        ));
        std::fs::write(p("short"), b"QF").unwrap();
        assert!(matches!(
            check(dir.path().join("short").as_ref(), DiskFormat::Qcow2),
            Err(ImageError::NotFormat(_))
        ));
        check(dir.path().join("base.raw").as_ref(), DiskFormat::Raw).unwrap();
    }
}

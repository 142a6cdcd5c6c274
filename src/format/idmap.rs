//! Ownership shifting: `uidmapping=`/`gidmapping=` and `squash_to_*`.
//!
//! Container engines keep image layers with unshifted ids (root is 0 on
//! disk) and ask the mount program to present them shifted for a container
//! with its own id range: `uidmapping=C:H:S` shows an on-disk id `d` in
//! `C..C+S` as `H + (d - C)`, and maps ids written through the mount (new
//! files, chown) back. On-disk ids outside every range show as the overflow
//! id 65534. `squash_to_uid=N` (and `_gid`, `squash_to_root`) show every
//! object as owned by N; chown then succeeds without changing anything.

use crate::error::{Errno, Result, SetupError};

/// The id shown for on-disk ids that no range maps.
const OVERFLOW_ID: u32 = 65534;

/// One `C:H:S` range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    /// First id on disk (the container's view).
    pub(crate) disk: u32,
    /// First id shown (the host's view).
    pub(crate) shown: u32,
    /// Number of ids.
    pub(crate) len: u32,
}

/// How one kind of id (uids or gids) is presented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IdMap {
    /// Ranges; empty means ids are shown as they are on disk.
    pub(crate) ranges: Vec<Range>,
    /// Show every object with this id (`squash_to_*`).
    pub(crate) squash: Option<u32>,
}

impl IdMap {
    /// Parse `C:H:S[:C:H:S...]` (a leading `:` is allowed).
    pub(crate) fn parse(key: &str, value: &str) -> std::result::Result<Vec<Range>, SetupError> {
        let v = value.strip_prefix(':').unwrap_or(value);
        let nums: Vec<&str> = v.split(':').collect();
        let bad = || {
            SetupError::new(format!(
                "option {key}={value}: expected CONTAINER:HOST:SIZE[:CONTAINER:HOST:SIZE...]"
            ))
        };
        if nums.is_empty() || nums.len() % 3 != 0 {
            return Err(bad());
        }
        let mut out = Vec::new();
        for c in nums.chunks(3) {
            let p = |s: &str| s.trim().parse::<u32>().map_err(|_| bad());
            let r = Range {
                disk: p(c[0])?,
                shown: p(c[1])?,
                len: p(c[2])?,
            };
            if r.len == 0
                || r.disk.checked_add(r.len - 1).is_none()
                || r.shown.checked_add(r.len - 1).is_none()
            {
                return Err(bad());
            }
            out.push(r);
        }
        Ok(out)
    }

    /// The id shown for on-disk id `d`.
    pub(crate) fn show(&self, d: u32) -> u32 {
        if let Some(s) = self.squash {
            return s;
        }
        if self.ranges.is_empty() {
            return d;
        }
        self.ranges
            .iter()
            .find(|r| d >= r.disk && d - r.disk < r.len)
            .map(|r| r.shown + (d - r.disk))
            .unwrap_or(OVERFLOW_ID)
    }

    /// The on-disk id for id `x` written through the mount; `None` when no
    /// range maps it.
    fn to_disk(&self, x: u32) -> Option<u32> {
        if self.ranges.is_empty() {
            return Some(x);
        }
        self.ranges
            .iter()
            .find(|r| x >= r.shown && x - r.shown < r.len)
            .map(|r| r.disk + (x - r.shown))
    }

    /// The on-disk id for a new object created by a caller with id `x`.
    pub(crate) fn owner_on_disk(&self, x: u32) -> u32 {
        self.to_disk(x).unwrap_or(OVERFLOW_ID)
    }

    /// The on-disk id a `chown` to `x` writes: `Ok(None)` leaves it as it
    /// is (squashed ids), `EINVAL` for an id no range maps.
    pub(crate) fn chown_to_disk(&self, x: u32) -> Result<Option<u32>> {
        if self.squash.is_some() {
            return Ok(None);
        }
        self.to_disk(x).map(Some).ok_or(Errno::INVAL)
    }
}

/// Uid and gid presentation of a mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ids {
    /// Uids.
    pub(crate) uid: IdMap,
    /// Gids.
    pub(crate) gid: IdMap,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_both_ways_and_overflow() -> std::result::Result<(), SetupError> {
        let m = IdMap {
            ranges: IdMap::parse("uidmapping", "0:100000:65536")?,
            squash: None,
        };
        assert_eq!(m.show(0), 100000);
        assert_eq!(m.show(1000), 101000);
        assert_eq!(m.show(70000), OVERFLOW_ID);
        assert_eq!(m.to_disk(100005), Some(5));
        assert_eq!(m.to_disk(5), None);
        assert_eq!(m.chown_to_disk(5), Err(Errno::INVAL));
        Ok(())
    }

    #[test]
    fn several_ranges_and_leading_colon() -> std::result::Result<(), SetupError> {
        let r = IdMap::parse("uidmapping", ":0:1:1000:1000:0:1:1001:1001:64536")?;
        assert_eq!(r.len(), 3);
        let m = IdMap {
            ranges: r,
            squash: None,
        };
        assert_eq!(m.show(0), 1);
        assert_eq!(m.show(1000), 0);
        assert_eq!(m.show(1001), 1001);
        assert_eq!(m.to_disk(0), Some(1000));
        Ok(())
    }

    #[test]
    fn squash_shows_one_owner_and_ignores_chown() {
        let m = IdMap {
            ranges: vec![],
            squash: Some(0),
        };
        assert_eq!(m.show(1234), 0);
        assert_eq!(m.chown_to_disk(55), Ok(None));
    }

    #[test]
    fn bad_mappings_are_refused() {
        for bad in ["", "1:2", "a:b:c", "0:0:0", "4294967295:0:2", "0:1:2:3"] {
            assert!(IdMap::parse("uidmapping", bad).is_err(), "{bad}");
        }
    }
}

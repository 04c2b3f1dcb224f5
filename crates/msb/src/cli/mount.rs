//! `msb volume mount` and `unmount`. (Being written for the filesystem server issue.)

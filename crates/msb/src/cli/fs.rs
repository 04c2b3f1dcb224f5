//! `msb volume fs`, `export` and `import`. (Being written for the VolumeFs issue.)

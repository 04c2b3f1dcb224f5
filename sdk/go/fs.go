package microsandbox

import "unicode/utf8"

// VolumeFs is host-side access to a volume's files; get it from Volume.FS
// or VolumeHandle.FS. Paths are relative to the volume root and confined to
// it by the Rust library's resolver (openat2 beneath the root): an absolute
// path, a ".." that leaves the root or a symlink leading outside fails with
// ErrPathEscape. A disk volume's files are those inside its image. Every
// call opens the volume afresh, so no handle is held between calls (a disk
// volume stays free for sandboxes).
type VolumeFs struct {
	volume string
	root   string
}

// Root is the host path of the volume (see Volume.Path).
func (f *VolumeFs) Root() string { return f.root }

// Read returns the file's bytes.
func (f *VolumeFs) Read(relPath string) ([]byte, error) {
	b, _, err := fsCall(fsRead, f.volume, relPath, nil)
	return b, err
}

// ReadString returns the file's content, which must be UTF-8.
func (f *VolumeFs) ReadString(relPath string) (string, error) {
	b, err := f.Read(relPath)
	if err != nil {
		return "", err
	}
	if !utf8.Valid(b) {
		return "", &Error{Kind: ErrNotUTF8, Message: relPath + " is not valid UTF-8"}
	}
	return string(b), nil
}

// Write writes data to the file, creating it (0644) or truncating it. The
// parent directory must exist.
func (f *VolumeFs) Write(relPath string, data []byte) error {
	_, _, err := fsCall(fsWrite, f.volume, relPath, data)
	return err
}

// WriteString writes content like Write.
func (f *VolumeFs) WriteString(relPath, content string) error {
	return f.Write(relPath, []byte(content))
}

// Mkdir creates a directory and its missing parents (0755).
func (f *VolumeFs) Mkdir(relPath string) error {
	_, _, err := fsCall(fsMkdir, f.volume, relPath, nil)
	return err
}

// Remove deletes a file or an empty directory.
func (f *VolumeFs) Remove(relPath string) error {
	_, _, err := fsCall(fsRemove, f.volume, relPath, nil)
	return err
}

// RemoveAll deletes a file or a directory tree (symlinks are removed, never
// followed).
func (f *VolumeFs) RemoveAll(relPath string) error {
	_, _, err := fsCall(fsRemoveAll, f.volume, relPath, nil)
	return err
}

// Exists reports whether a file or directory exists at the path.
func (f *VolumeFs) Exists(relPath string) (bool, error) {
	_, n, err := fsCall(fsExists, f.volume, relPath, nil)
	return n == 1, err
}

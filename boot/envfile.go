package boot

import (
	"fmt"
	"os"
)

// ReadEnvFile reads and decodes a grubenv file.
func ReadEnvFile(path string) (Env, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Env{}, fmt.Errorf("read grubenv %s: %w", path, err)
	}
	e, err := ParseEnv(b)
	if err != nil {
		return Env{}, fmt.Errorf("read grubenv %s: %w", path, err)
	}
	return e, nil
}

// WriteEnvFile rewrites an existing grubenv in place: same size, no truncation, synced.
// GRUB's save_env writes the file's blocks directly, so the file must keep its blocks; a
// rename or truncate would move them and GRUB's next save_env could write a stale location.
func WriteEnvFile(path string, e Env) error {
	b, err := e.Encode()
	if err != nil {
		return fmt.Errorf("write grubenv %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("write grubenv %s: %w", path, err)
	}
	if fi, err := f.Stat(); err == nil && fi.Size() != EnvSize {
		f.Close()
		return fmt.Errorf("write grubenv %s: %w: file has %d bytes", path, ErrEnvSize, fi.Size())
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		f.Close()
		return fmt.Errorf("write grubenv %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync grubenv %s: %w", path, err)
	}
	return f.Close()
}

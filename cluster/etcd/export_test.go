package etcd

// SetOnKeepAlive sets the hook called with each keep-alive stream a Lock opens.
func SetOnKeepAlive(f func(*Lock)) { onKeepAlive = f }

// DropKeepAlive ends l's keep-alive stream, as etcd's client ends one whose first answer comes
// later than its dial timeout + 1 s (a starved member): a failure a healthy test cluster does
// not produce on demand.
func DropKeepAlive(l *Lock) {
	l.mu.Lock()
	stop := l.stopKA
	l.mu.Unlock()
	stop()
}

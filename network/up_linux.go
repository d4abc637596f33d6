package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/vishvananda/netlink"
)

// Up configures loopback and the primary link, and returns the primary link's addresses.
// Result is what the link came up with: its addresses and, from DHCP, name servers and search
// domains.
type Result struct {
	Addrs       []netip.Prefix
	Nameservers []netip.Addr
	Search      []string
}

func Up(ctx context.Context, cfg Config, log *slog.Logger) (Result, error) {
	var res Result
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return res, fmt.Errorf("network: lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return res, fmt.Errorf("network: lo up: %w", err)
	}
	link, err := waitLink(ctx, cfg.Device)
	if err != nil {
		return res, err
	}
	name := link.Attrs().Name
	if cfg.Static != nil {
		if err := configureStatic(link, *cfg.Static); err != nil {
			return res, err
		}
		log.Info("network: static address", "link", name, "addr", cfg.Static.Addr, "gateway", cfg.Static.Gateway)
	} else {
		lease, err := dhcp(ctx, link)
		if err != nil {
			return res, err
		}
		if err := lease.Configure(); err != nil {
			return res, fmt.Errorf("network: %s: configure lease: %w", name, err)
		}
		log.Info("network: dhcp lease", "link", name, "lease", lease.String())
		if p, ok := lease.(*dhclient.Packet4); ok {
			ns, search, _ := p.GatherDNSSettings()
			for _, ip := range ns {
				if a, ok := netip.AddrFromSlice(ip.To4()); ok {
					res.Nameservers = append(res.Nameservers, a)
				}
			}
			res.Search = search
		}
	}
	res.Addrs, err = Addresses(name)
	return res, err
}

// waitLink waits for the named link, or the first non-loopback one: a NIC driver loaded a
// moment ago registers its netdev asynchronously.
func waitLink(ctx context.Context, name string) (netlink.Link, error) {
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("network: list links: %w", err)
		}
		for _, l := range links {
			a := l.Attrs()
			if name != "" && a.Name == name {
				return l, nil
			}
			if name == "" && a.Flags&net.FlagLoopback == 0 && l.Type() == "device" && len(a.HardwareAddr) == 6 {
				return l, nil
			}
		}
		select {
		case <-ctx.Done():
			if name == "" {
				name = "any ethernet link"
			}
			return nil, fmt.Errorf("network: wait for %s: %w", name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func configureStatic(link netlink.Link, s Static) error {
	name := link.Attrs().Name
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: s.Addr.Addr().AsSlice(), Mask: net.CIDRMask(s.Addr.Bits(), 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("network: %s: add %s: %w", name, s.Addr, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("network: %s up: %w", name, err)
	}
	if s.Gateway.IsValid() {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: s.Gateway.AsSlice()}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("network: %s: default route via %s: %w", name, s.Gateway, err)
		}
	}
	return nil
}

func dhcp(ctx context.Context, link netlink.Link) (dhclient.Lease, error) {
	name := link.Attrs().Name
	cfg := dhclient.Config{Timeout: 2 * time.Second, Retries: 4}
	results := dhclient.SendRequests(ctx, []netlink.Link{link}, true, false, cfg, 10*time.Second)
	var errs []error
	for {
		// u-root closes the channel only when every attempt has returned, and a blocked read
		// may outlive ctx: wait on ctx too, or a silent network hangs the boot.
		select {
		case r, ok := <-results:
			if !ok {
				if len(errs) == 0 {
					errs = append(errs, errors.New("link did not come up"))
				}
				return nil, fmt.Errorf("network: dhcp on %s: %w", name, errors.Join(errs...))
			}
			if r.Err != nil {
				errs = append(errs, r.Err)
				continue
			}
			return r.Lease, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("network: dhcp on %s: %w", name, errors.Join(append(errs, ctx.Err())...))
		}
	}
}

// Addresses lists a link's IPv4 addresses.
func Addresses(name string) ([]netip.Prefix, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("network: %s: %w", name, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("network: %s addresses: %w", name, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out, nil
}

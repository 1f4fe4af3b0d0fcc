"""The cluster's network, built from network namespaces (all in 198.18.0.0/15).

    pod-a 198.18.1.10 ─┐
    pod-b 198.18.1.11 ─┼─ br0 198.18.1.1/24 ┌ node ┐ 198.18.0.1/30 ── 198.18.0.2/30  internet
    pod-c 198.18.1.12 ─┘   (pod CIDR)        └──────┘  (node's "eth0", its InternalIP)

The internet namespace holds, on its loopback interface, every remote address:
the bucket and denied hosts, the metadata server, the OTLP collector, and the
service CIDR 198.19.0.0/16 (the API server's `kubernetes` service, the cluster
DNS and a plain service), as kube-proxy would make them reachable from the node.
"""
import subprocess

NODE_IP = "198.18.0.1"
INET_IP = "198.18.0.2"
POD_GW = "198.18.1.1"
POD_CIDR = "198.18.1.0/24"
SERVICE_CIDR = "198.19.0.0/16"
API_IP = "198.19.0.1"
DNS_IP = "198.19.0.10"
SERVICE_IP = "198.19.0.20"
BUCKET_IP = "198.18.16.10"
DENIED_IP = "198.18.16.11"
OTHER_PORT_IP = "198.18.16.12"
OTLP_IP = "198.18.16.30"
METADATA_IP = "198.18.16.254"
OUTSIDE_GW = "198.18.32.1"
OUTSIDE_IP = "198.18.32.2"
INTERNET_ADDRS = [BUCKET_IP, DENIED_IP, OTHER_PORT_IP, OTLP_IP, METADATA_IP, API_IP, DNS_IP, SERVICE_IP]


def sh(*argv, check=True):
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def in_ns(ns, *argv, check=True):
    return sh("ip", "netns", "exec", ns, *argv, check=check)


class Topology:
    def __init__(self, prefix):
        self.prefix = prefix
        self.node = f"{prefix}-node"
        self.inet = f"{prefix}-inet"
        self.pods = {}  # pod name → netns
        self.created = []
        self.veths = 0
        self.outside = None

    def add_ns(self, name):
        sh("ip", "netns", "add", name)
        self.created.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")

    def build(self):
        self.add_ns(self.node)
        self.add_ns(self.inet)
        n, i = self.node, self.inet
        sh("ip", "link", "add", "eth0", "netns", n, "type", "veth", "peer", "name", "eth0", "netns", i)
        in_ns(n, "ip", "addr", "add", f"{NODE_IP}/30", "dev", "eth0")
        in_ns(n, "ip", "link", "set", "eth0", "up")
        in_ns(i, "ip", "addr", "add", f"{INET_IP}/30", "dev", "eth0")
        in_ns(i, "ip", "link", "set", "eth0", "up")
        in_ns(n, "ip", "route", "add", "default", "via", INET_IP)
        in_ns(n, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # A fixed MAC: a bridge otherwise takes the lowest MAC of its ports,
        # so each new pod's veth could change the gateway's MAC under the
        # pods' ARP caches (their traffic then blackholes for seconds).
        in_ns(n, "ip", "link", "add", "br0", "address", "02:00:c6:12:01:01", "type", "bridge")
        in_ns(n, "ip", "addr", "add", f"{POD_GW}/24", "dev", "br0")
        in_ns(n, "ip", "link", "set", "br0", "up")
        for a in INTERNET_ADDRS:
            in_ns(i, "ip", "addr", "add", f"{a}/32", "dev", "lo")
        in_ns(i, "ip", "route", "add", POD_CIDR, "via", NODE_IP)

    def add_outside(self):
        """A host outside the pod network (issue #19): beyond the internet
        namespace, which routes between it and the node."""
        ns = f"{self.prefix}-outside"
        self.add_ns(ns)
        sh("ip", "link", "add", "out0", "netns", self.inet, "type", "veth", "peer", "name", "eth0", "netns", ns)
        in_ns(self.inet, "ip", "addr", "add", f"{OUTSIDE_GW}/24", "dev", "out0")
        in_ns(self.inet, "ip", "link", "set", "out0", "up")
        in_ns(self.inet, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        in_ns(ns, "ip", "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")
        in_ns(ns, "ip", "link", "set", "eth0", "up")
        in_ns(ns, "ip", "route", "add", "default", "via", OUTSIDE_GW)
        self.outside = ns
        return ns

    def add_pod(self, pod, ip):
        """A pod sandbox: its own netns, a veth on the node's bridge."""
        ns = f"{self.prefix}-{pod}"
        self.add_ns(ns)
        self.veths += 1
        host_if = f"v{self.veths}"
        sh("ip", "link", "add", host_if, "netns", self.node, "type", "veth", "peer", "name", "eth0", "netns", ns)
        in_ns(self.node, "ip", "link", "set", host_if, "master", "br0")
        in_ns(self.node, "ip", "link", "set", host_if, "up")
        in_ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        in_ns(ns, "ip", "link", "set", "eth0", "up")
        in_ns(ns, "ip", "route", "add", "default", "via", POD_GW)
        self.pods[pod] = ns
        return ns

    def remove_pod(self, pod):
        ns = self.pods.pop(pod, None)
        if ns:
            sh("ip", "netns", "del", ns, check=False)
            if ns in self.created:
                self.created.remove(ns)

    def destroy(self):
        for ns in reversed(self.created):
            sh("ip", "netns", "del", ns, check=False)
        self.created = []

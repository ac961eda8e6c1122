"""The one harness of the test suites and the benchmarks (benchmarks/common.py imports it).

processes    Proc (a child in its own session, stdout read by a thread, stderr in a
             file, killed at exit), LineReader, wait_until, free_port, popen, sessions
daemons      MasterProcess and SlaveProcess: xcp-master and xcp-slave, started and awaited
clients      channels and stubs, the xcp CLI, grpcurl, the clients' clean environment
pool         RunningPool: a master and N slaves (plaintext or mutual TLS), certificates
pool_script  PoolScript: ./scripts/pool in its own session, its banner parsed
node_client  the Node.js client, or a skip with the reason
lab          the fault tests' Lab (masters per module) and Case (one test's slaves)
observers    what a fault test sees: Client, Pending calls, settle, the Watch recorder
netns        test hosts: network namespaces that can be partitioned (root)
libvirtd     real libvirt: libvirtd started where none runs, the guest, QEMU's side (root)
fakes        the one fake gRPC call and servicer context of the unit tests
prometheus   a real Prometheus server (temporary config and data dir) and its HTTP API
"""

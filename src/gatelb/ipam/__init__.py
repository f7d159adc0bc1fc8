"""Address management: one allocator core and the two policies on it.

- `gatelb.ipam.core`: pools, holders, the lowest-free scan with hints, avoidBuggyIPs and the IPv6
  subnet-router anycast rule, exclusive or shared holding; knows no object kind;
- `gatelb.ipam.lb`: L4LB objects (`Allocator`, `allocate`, `allocate_partial`, `LBAllocator`,
  `IncrementalAllocator`);
- `gatelb.ipam.services`: Kubernetes Services, MetalLB-style (`ServiceAllocator`,
  `allocate_services`).

Turning allocated L4LBs into services (health, drain) is `gatelb.resolve`, not IPAM.
"""

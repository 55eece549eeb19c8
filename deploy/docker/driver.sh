#!/bin/sh
# Entry point of the compose `sweep` service: `docker compose run --rm sweep run STUDY ...`.
#
# ray.init(address="host:port") attaches a driver through a raylet on the driver's own host;
# a container that only reaches the head's GCS over the network has none, and ray.init fails
# to find a node to connect to. So this container first joins the cluster as a node with no
# CPUs and no GPUs (no trial is ever scheduled here), then runs gansweep as the driver with
# RAY_ADDRESS pointing at the head. The container's init (compose `init: true`) reaps the
# raylet when gansweep exits.
set -eu

: "${RAY_ADDRESS:?RAY_ADDRESS must name the Ray head, e.g. ray-head:6379}"
ray start --address="$RAY_ADDRESS" --num-cpus=0 --num-gpus=0 --disable-usage-stats
exec gansweep "$@"

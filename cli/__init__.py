"""The `tcam-ray` command line (installed as `tcam_ray.cli`)."""

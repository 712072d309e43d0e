"""Ray Tune sweeps of either stage (`tcam-ray tune`): sweep files (sweep.py), the search space
(search_space.py), per-trial resources (resources.py), one trial (trial.py), running and resuming a
sweep (tuner.py), which sweep folders may resume (trust.py: only the user's own, since Tune's state
is pickled Python) and its results (results.py)."""

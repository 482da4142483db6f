"""The daily cycle (`run_cycle`: what the deployments do for one as_of, in order) and the replay that
drives cycles from the clock and sends each cycle's next events to the real scorer over HTTP."""

"""Sinks: copies of warehouse tables in other systems, fed from the same lake manifests as the loads."""

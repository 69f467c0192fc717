"""The bench: simulated rectifier and potroom PLCs driven by the twin, faults, scenarios."""

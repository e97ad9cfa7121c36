"""Running the fleet's pieces as real processes on one machine."""

"""The load sweep behind `smartspec bench sweep`: load generator, prompt sets, local stacks, reports (extra `bench`)."""

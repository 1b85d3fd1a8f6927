"""cpmi-gateway: a T/CPMI 002-2018 bridge between parking-lot systems and an operator cloud."""

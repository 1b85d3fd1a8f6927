from twisted.application.service import ServiceMaker

from gateway import __version__

cpmiGateway = ServiceMaker(
    "cpmi-gateway",
    "gateway.tap",
    f"A T/CPMI 002-2018 parking-lot gateway with a durable replay journal (cpmi-gateway {__version__}).",
    "cpmi-gateway",
)

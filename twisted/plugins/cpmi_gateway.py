from twisted.application.service import ServiceMaker

cpmiGateway = ServiceMaker(
    "cpmi-gateway",
    "gateway.tap",
    "A T/CPMI 002-2018 parking-lot gateway with a durable replay journal.",
    "cpmi-gateway",
)

from twisted.application.service import ServiceMaker

mozpool = ServiceMaker("mozpool", "mozpool.tap", "MozPool device-pool manager", "mozpool")

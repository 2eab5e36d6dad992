# twistd -ny mozpool.tac -- the same service as `twistd -n mozpool`, configured by $MOZPOOL_CONFIG.
from twisted.application.service import Application
from twisted.internet import reactor

from mozpool.tap import Options, makeService

options = Options()
options.parseOptions([])
application = Application("mozpool")
makeService(options, reactor).setServiceParent(application)

import XCTest
import CausalServer

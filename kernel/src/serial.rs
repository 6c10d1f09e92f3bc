//! COM1 and the `log` backend that writes to it.

use core::fmt::{self, Write};

use kernel::logfmt;
use log::{Level, LevelFilter, Log, Metadata, Record};
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

use crate::arch;

const COM1: u16 = 0x3f8;

static PORT: Mutex<Option<Uart16550<PioBackend>>> = Mutex::new(None);

struct PortWriter<'a>(&'a mut Option<Uart16550<PioBackend>>);

impl Write for PortWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(uart) = self.0.as_mut() {
            uart.send_bytes_exact(s.as_bytes());
        }
        Ok(())
    }
}

/// Sets up COM1; without a UART the kernel runs silently.
pub fn init() {
    // SAFETY: 0x3f8..0x3ff is COM1 on every PC and this kernel uses it only
    // through `PORT`.
    let uart = unsafe { Uart16550::new_port(COM1) };
    if let Ok(mut uart) = uart {
        if uart.init(Config::DEFAULT).is_ok() {
            *PORT.lock() = Some(uart);
        }
    }
}

/// Writes while other CPUs may hold the port lock forever (they may be the
/// ones that crashed): waits a bounded time, then takes the port anyway.
pub fn emergency(f: impl FnOnce(&mut dyn Write)) {
    let mut spins = 0u32;
    let mut guard = loop {
        if let Some(g) = PORT.try_lock() {
            break g;
        }
        spins += 1;
        if spins > 1_000_000 {
            // SAFETY: the holder is stuck (crashed or halted mid-line); a
            // garbled line beats losing the report.
            unsafe { PORT.force_unlock() };
        }
        core::hint::spin_loop();
    };
    let mut w = PortWriter(&mut guard);
    let _ = logfmt::write_prefix(&mut w, arch::time::nanos_since_entry(), arch::current_cpu(), Level::Error);
    f(&mut w);
}

struct SerialLogger;

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = arch::time::nanos_since_entry();
        let cpu = arch::current_cpu();
        // With interrupts off, nothing on this CPU can wait for the lock
        // this CPU holds.
        x86_64::instructions::interrupts::without_interrupts(|| {
            let mut guard = PORT.lock();
            let mut w = PortWriter(&mut guard);
            let _ = logfmt::write_prefix(&mut w, now, cpu, record.level());
            let _ = writeln!(w, "{}", record.args());
        });
    }

    fn flush(&self) {}
}

static LOGGER: SerialLogger = SerialLogger;

pub fn init_logger() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}

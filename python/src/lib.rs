//! `hms_deploy._native`: the `pd` commands for Python.
//!
//! There is no second implementation here: [`run`] hands an argument list to `pd_cli::run_with`,
//! the function behind the `pd` binary, with an observer that collects the JSON result,
//! forwards progress to a Python callable and lets Ctrl-C end a wait. Errors become the
//! exception classes below, carrying the CLI's message. The Python layer (`hms_deploy`)
//! builds the argument lists and gives them a typed signature.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;

create_exception!(hms_deploy, PolicyDeployError, PyException, "Anything pd refused or could not do.");
create_exception!(
    hms_deploy,
    RefusedError,
    PolicyDeployError,
    "A ledger rule refused the action; the refused step wrote nothing."
);
create_exception!(
    hms_deploy,
    NotApprovedError,
    RefusedError,
    "The package lacks the approvals a deployment needs."
);
create_exception!(
    hms_deploy,
    AdoptionError,
    PolicyDeployError,
    "Targets of an environment did not all load the version."
);
create_exception!(
    hms_deploy,
    AdoptionTimeoutError,
    AdoptionError,
    "Targets did not acknowledge the version before the timeout."
);
create_exception!(
    hms_deploy,
    TargetFailedError,
    AdoptionError,
    "A target reported that loading the version failed."
);
create_exception!(
    hms_deploy,
    VerificationError,
    PolicyDeployError,
    "A signature, hash, chain or export check failed."
);
create_exception!(
    hms_deploy,
    UnreachableError,
    PolicyDeployError,
    "The pd server or artifact store could not be reached."
);
create_exception!(
    hms_deploy,
    UsageError,
    PolicyDeployError,
    "Bad arguments or environment: no home, no key, no such file."
);

/// Collects the command's result and passes progress and interrupts between pd and Python.
struct Caller {
    result: Arc<Mutex<Option<serde_json::Value>>>,
    on_progress: Option<Arc<Py<PyAny>>>,
}

impl pd_cli::Observer for Caller {
    fn result(&self, value: serde_json::Value) {
        if let Ok(mut slot) = self.result.lock() {
            *slot = Some(value);
        }
    }

    fn progress(&self, event: serde_json::Value) -> anyhow::Result<()> {
        let Some(callback) = &self.on_progress else { return Ok(()) };
        Python::attach(|py| {
            let event = py.import("json")?.call_method1("loads", (event.to_string(),))?;
            callback.call1(py, (event,)).map(drop)
        })
        .map_err(anyhow::Error::new)
    }

    fn check(&self) -> anyhow::Result<()> {
        Python::attach(|py| py.check_signals()).map_err(anyhow::Error::new)
    }
}

/// Runs `pd ARGS…` in this process and returns its `--json` result as JSON text (None if it
/// has none). The GIL is released while pd works; Python signal handlers run during waits.
#[pyfunction]
#[pyo3(signature = (args, on_progress=None))]
fn run(py: Python<'_>, args: Vec<OsString>, on_progress: Option<Py<PyAny>>) -> PyResult<Option<String>> {
    let result = Arc::new(Mutex::new(None));
    // The last reference to the callback is dropped here, with the GIL held.
    let on_progress = on_progress.map(Arc::new);
    let caller = Caller { result: Arc::clone(&result), on_progress: on_progress.clone() };
    let argv = std::iter::once(OsString::from("pd")).chain(args);
    let outcome = py.detach(move || pd_cli::run_with(argv, Some(Box::new(caller))));
    outcome.map_err(|e| to_py(py, &e))?;
    let value = result.lock().map_err(|_| PolicyDeployError::new_err("a pd thread panicked"))?.take();
    Ok(value.map(|v| v.to_string()))
}

/// Verifies an exported ledger as `pd-verify FILE` does (`pd-verify --no-artifacts FILE` with
/// `no_artifacts`); returns the report as JSON text. Errors carry pd-verify's message and exit
/// code; a bad entry's seq is `seq`.
#[pyfunction]
#[pyo3(signature = (path, no_artifacts = false))]
fn verify(py: Python<'_>, path: PathBuf, no_artifacts: bool) -> PyResult<String> {
    let report = py.detach(|| {
        let report = pd_verify::verify_file(&path, None)?;
        if !no_artifacts {
            report.require_artifacts()?;
        }
        Ok::<_, pd_verify::VerifyError>(pd_verify::report_json(&report))
    });
    let e = match report {
        Ok(json) => return Ok(json.to_string()),
        Err(e) => e,
    };
    let err = match e.exit_code() {
        1 => VerificationError::new_err(e.to_string()),
        _ => UsageError::new_err(e.to_string()),
    };
    let value = err.value(py);
    value.setattr("exit_code", e.exit_code())?;
    if value.is_instance_of::<VerificationError>() {
        let seq = match &e {
            pd_verify::VerifyError::Entry(r) => Some(r.seq),
            _ => None,
        };
        value.setattr("seq", seq)?;
    }
    Err(err)
}

/// The exception for a pd error: its class says what kind of failure it was, its message is
/// the CLI's, and attributes carry what a script acts on.
fn to_py(py: Python<'_>, err: &anyhow::Error) -> PyErr {
    // A Python exception raised in a callback or by a signal handler goes back unchanged.
    if let Some(e) = err.chain().find_map(|e| e.downcast_ref::<PyErr>()) {
        return e.clone_ref(py);
    }
    let message = pd_cli::message(err);
    let failure = pd_cli::failure(err);
    let exc = match failure {
        pd_cli::Failure::Refused => RefusedError::new_err(message),
        pd_cli::Failure::NotApproved => NotApprovedError::new_err(message),
        pd_cli::Failure::NotAdopted => match err.chain().find_map(|e| e.downcast_ref::<pd_cli::NotAdopted>())
        {
            Some(n) if !n.failed.is_empty() => TargetFailedError::new_err(message),
            _ => AdoptionTimeoutError::new_err(message),
        },
        pd_cli::Failure::Verification => VerificationError::new_err(message),
        pd_cli::Failure::Unreachable => UnreachableError::new_err(message),
        pd_cli::Failure::Usage => UsageError::new_err(message),
    };
    if let Err(e) = details(py, &exc, err, failure) {
        return e;
    }
    exc
}

/// Sets `exit_code` (as the CLI's) and the details of approvals and adoption failures.
fn details(py: Python<'_>, exc: &PyErr, err: &anyhow::Error, failure: pd_cli::Failure) -> PyResult<()> {
    let value = exc.value(py);
    value.setattr("exit_code", failure.exit_code())?;
    if failure == pd_cli::Failure::Verification {
        value.setattr("seq", None::<u64>)?;
    }
    if let Some(pd_ledger::RuleError::NotApproved { version, have, need }) = pd_cli::rule_error(err) {
        value.setattr("version", version.to_string())?;
        value.setattr("approvals", *have)?;
        value.setattr("required", *need)?;
    }
    if let Some(n) = err.chain().find_map(|e| e.downcast_ref::<pd_cli::NotAdopted>()) {
        let failed = PyDict::new(py);
        for (target, error) in &n.failed {
            failed.set_item(target, error)?;
        }
        value.setattr("env", &n.env)?;
        value.setattr("version", n.version.to_string())?;
        value.setattr("failed", failed)?;
        value.setattr("missing", n.missing.clone())?;
        value.setattr("rolled_back_to", n.rolled_back_to.map(|v| v.to_string()))?;
    }
    Ok(())
}

/// The module: `run`, `verify` and the exception classes.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add("PolicyDeployError", py.get_type::<PolicyDeployError>())?;
    m.add("RefusedError", py.get_type::<RefusedError>())?;
    m.add("NotApprovedError", py.get_type::<NotApprovedError>())?;
    m.add("AdoptionError", py.get_type::<AdoptionError>())?;
    m.add("AdoptionTimeoutError", py.get_type::<AdoptionTimeoutError>())?;
    m.add("TargetFailedError", py.get_type::<TargetFailedError>())?;
    m.add("VerificationError", py.get_type::<VerificationError>())?;
    m.add("UnreachableError", py.get_type::<UnreachableError>())?;
    m.add("UsageError", py.get_type::<UsageError>())?;
    Ok(())
}

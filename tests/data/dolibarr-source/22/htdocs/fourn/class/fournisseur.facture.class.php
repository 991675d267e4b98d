<?php
class FactureFournisseur extends CommonInvoice
{
	public function setCanceled($user)
	{
		// the code fired here differs from the one the dictionary offers
		$result = $this->call_trigger('BILL_SUPPLIER_CANCEL', $user);
		return $result;
	}
	public function validate($user)
	{
		$result = $this->call_trigger("BILL_SUPPLIER_VALIDATE", $user);
		return $result;
	}
}

<?php
class FactureFournisseur extends CommonInvoice
{
	public function validate($user)
	{
		$result = $this->call_trigger('BILL_SUPPLIER_VALIDATE', $user);
		return $result;
	}
}
